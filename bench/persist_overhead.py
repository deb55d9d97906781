"""Cost of persisting one task event (Lua append) and of persist + publish: the
worker's path (the append publishes) and the two-step one (publish after it, the
path of a writer that waits for replicas), sample by sample in turn so that the
machine's load falls on both alike.

Runs inside a worker container, next to the stack's Redis, on the worker's own
code path:  docker compose exec -T worker python - < bench/persist_overhead.py
Prints one JSON object; creates one scratch task per run and deletes it.
"""

import json
import statistics
import time

from taskbeam import protocol, worker
from taskbeam.emitter import Emitter

N = 5000


def timed(fn, n):
    return timed_in_turn([fn], n)[0]


def timed_in_turn(fns, n):
    """``n`` samples of each of ``fns``, taking one of each in turn."""
    samples = [[] for _ in fns]
    for i in range(n):
        for fn, taken in zip(fns, samples):
            start = time.perf_counter()
            fn(i)
            taken.append((time.perf_counter() - start) * 1e6)
    return [summary(sorted(taken)) for taken in samples]


def summary(samples):
    n = len(samples)
    return {
        "n": n,
        "mean_us": round(statistics.fmean(samples), 1),
        "p50_us": round(samples[n // 2], 1),
        "p99_us": round(samples[int(n * 0.99)], 1),
    }


def main():
    store, emitter = worker.store, worker.emitter
    task = store.create(kind="simulate", owner="bench", params={})
    task_id = task["id"]
    try:
        token = store.claim_run(task_id, 3600)
        store.append(task_id, token=token, state=protocol.RUNNING)
        # The same append with each of the run's checks added in turn.
        plain = timed(lambda i: store.append(task_id, progress=i % 100, message="bench"), N)
        idempotent = timed(
            lambda i: store.append(
                task_id, emit_id=store.new_emit_id(), progress=i % 100, message="bench"
            ),
            N,
        )
        fenced = timed(
            lambda i: store.append(
                task_id, token=token, emit_id=store.new_emit_id(), progress=i % 100, message="bench"
            ),
            N,
        )
        two_steps = Emitter(store, emitter.socketio, store_publishes=False)
        emit, emit_two_steps = timed_in_turn(
            [
                lambda i: emitter.emit(task_id, token=token, progress=i % 100, message="bench"),
                lambda i: two_steps.emit(task_id, token=token, progress=i % 100, message="bench"),
            ],
            N,
        )
        # What fsync on every write would cost (Redis ships `everysec`).
        fsync = store.redis.config_get("appendfsync")["appendfsync"]
        store.redis.config_set("appendfsync", "always")
        try:
            always = timed(
                lambda i: store.append(
                    task_id,
                    token=token,
                    emit_id=store.new_emit_id(),
                    progress=i % 100,
                    message="bench",
                ),
                N // 5,
            )
        finally:
            store.redis.config_set("appendfsync", fsync)
        baseline = timed(lambda i: store.redis.ping(), N)
    finally:
        store.release_lease(task_id, token)
        store.delete(task_id, "bench")
    print(
        json.dumps(
            {
                "persist_event": fenced,
                # The worker's path: the append publishes, unless it waits for replicas.
                "persist_and_publish": emit,
                "persist_and_publish_in_append": emit if emitter.in_append else None,
                "persist_then_publish": emit_two_steps,
                "persist_without_checks": plain,
                "persist_idempotent_only": idempotent,
                "persist_appendfsync_always": always,
                "redis_ping_round_trip": baseline,
            }
        )
    )


main()

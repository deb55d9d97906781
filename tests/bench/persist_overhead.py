"""Cost of persisting one task event (Lua append) and of persist + publish.

Runs inside a worker container, next to the stack's Redis, on the worker's own
code path:  docker compose exec -T worker python - < tests/bench/persist_overhead.py
Prints one JSON object; creates one scratch task per run and deletes it.
"""
import json
import statistics
import time

from taskbeam import protocol, worker

N = 5000


def timed(fn, n):
    samples = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {"n": n, "mean_us": round(statistics.fmean(samples), 1),
            "p50_us": round(samples[n // 2], 1), "p99_us": round(samples[int(n * 0.99)], 1)}


def main():
    store, emitter = worker.store, worker.emitter
    task = store.create(kind="simulate", owner="bench", params={})
    try:
        store.append(task["id"], state=protocol.RUNNING)
        persist = timed(lambda i: store.append(task["id"], progress=i % 100, message="bench"), N)
        emit = timed(lambda i: emitter.emit(task["id"], progress=i % 100, message="bench"), N)
        baseline = timed(lambda i: store.redis.ping(), N)
    finally:
        store.delete(task["id"], "bench")
    print(json.dumps({"persist_event": persist, "persist_and_publish": emit,
                      "redis_ping_round_trip": baseline}))


main()

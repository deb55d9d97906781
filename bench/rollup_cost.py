"""Cost of a workflow child's event (its append rolls up into the parent) against a
plain task's, sample by sample in turn; and how many parent events a browser gets
while 1,000 children each report 10 times a second.

Runs inside a worker container, next to the stack's Redis, on the worker's own code
path:  docker compose exec -T worker python - < bench/rollup_cost.py
Prints one JSON object; its scratch tasks are deleted at the end.
"""

import json
import statistics
import time

from taskbeam import protocol, registry, tasks, worker

N = 3000
CHILDREN = 1000
REPORTS_PER_S = 10
SECONDS = 5


def summary(samples):
    samples = sorted(samples)
    n = len(samples)
    return {
        "n": n,
        "p50_us": round(samples[n // 2], 1),
        "p99_us": round(samples[int(n * 0.99)], 1),
        "mean_us": round(statistics.fmean(samples), 1),
    }


def workflow(store, settings):
    job, params, plan = tasks.validate(
        "primes", {"limit": 1_000_000, "shards": CHILDREN, "slow_ms": 0}, settings
    )
    parent = store.create(kind="primes", owner="bench", params=params)
    tasks._create_children(store, job, parent, plan)
    store.append(parent["id"], state=protocol.RUNNING, message="bench")
    kids = store.child_ids(parent["id"])
    tokens = {kid: store.claim_run(kid, 3600) for kid in kids}
    for kid, token in tokens.items():
        store.append(kid, token=token, state=protocol.RUNNING)
    return parent["id"], kids, tokens


def main():
    store, emitter, settings = worker.store, worker.emitter, worker.settings
    registry.get("primes")
    plain = store.create(kind="simulate", owner="bench", params={})
    plain_token = store.claim_run(plain["id"], 3600)
    store.append(plain["id"], token=plain_token, state=protocol.RUNNING)
    parent, kids, tokens = workflow(store, settings)
    try:
        # One child event against one plain one, in turn: the same load on both.
        plain_us, child_us = [], []
        for i in range(N):
            kid = kids[i % CHILDREN]
            pct = 1 + i // CHILDREN  # each child moves on: every append rolls up
            for task_id, token, taken in (
                (plain["id"], plain_token, plain_us),
                (kid, tokens[kid], child_us),
            ):
                start = time.perf_counter()
                emitter.emit(task_id, token=token, progress=pct)
                taken.append((time.perf_counter() - start) * 1e6)
        before = store.redis.hget(store.keys.task(parent), "seq")
        # 1,000 children at 10 reports a second each, for SECONDS (paced).
        started, sent = time.monotonic(), 0
        period = 1 / (CHILDREN * REPORTS_PER_S)
        while time.monotonic() - started < SECONDS:
            kid = kids[sent % CHILDREN]
            pct = min(99, 10 + sent // CHILDREN)
            emitter.emit(kid, token=tokens[kid], progress=pct)
            sent += 1
            wait = started + sent * period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        elapsed = time.monotonic() - started
        emitter.flush_rollups()
        parent_events = int(store.redis.hget(store.keys.task(parent), "seq")) - int(before)
        out = {
            "plain_event": summary(plain_us),
            "child_event_with_rollup": summary(child_us),
            "ratio_p50": round(summary(child_us)["p50_us"] / summary(plain_us)["p50_us"], 2),
            "children": CHILDREN,
            "child_reports_per_s": round(sent / elapsed),
            "parent_events_per_s": round(parent_events / elapsed, 1),
        }
        print(json.dumps(out, indent=1))
    finally:
        for task_id in (plain["id"], parent):
            store.append(task_id, state=protocol.CANCELLED, message="bench over")
            store.remove_finished(task_id, "bench")


if __name__ == "__main__":
    main()

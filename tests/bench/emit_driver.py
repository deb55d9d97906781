"""Event source for `make bench`, run inside a worker container on the worker's
real emit path (persist to Redis, then publish through the Socket.IO queue):

    docker compose exec -T worker python - OWNER TASKS < tests/bench/emit_driver.py

Creates TASKS running tasks owned by OWNER and prints their ids as one JSON line.
Then, for every line `RATE SECONDS` read from stdin, emits progress events round-
robin over the tasks at RATE events/s for SECONDS (split over PROCESSES emitters)
and prints `{"emitted": n, "seconds": s}`. An empty line ends it and ends the tasks.
"""
import json
import multiprocessing
import sys
import time

from taskbeam import protocol, worker

PROCESSES = 2


def emit_share(task_ids, rate, seconds, start_at, index, processes, done):
    """One emitter process: its share of the rate, paced in 10 ms ticks."""
    emitter = worker.emitter
    share = task_ids[index::processes]
    per_tick = rate / processes / 100
    sent, owed, tick = 0, 0.0, 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < start_at + seconds:
        owed += per_tick
        while owed >= 1:
            emitter.emit(share[sent % len(share)], progress=(sent // len(share)) % 100,
                         message="bench")
            sent += 1
            owed -= 1
        tick += 1
        pause = start_at + tick / 100 - time.time()
        if pause > 0:
            time.sleep(pause)
    done.put(sent)


def main():
    owner, count = sys.argv[1], int(sys.argv[2])
    store = worker.store
    ids = []
    for _ in range(count):
        task = store.create(kind="simulate", owner=owner, params={"steps": 1, "step_ms": 0})
        store.append(task["id"], state=protocol.RUNNING, message="bench")
        ids.append(task["id"])
    print(json.dumps({"task_ids": ids}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        rate, seconds = float(line.split()[0]), float(line.split()[1])
        done = multiprocessing.Queue()
        start_at = time.time() + 0.2
        processes = min(PROCESSES, len(ids))
        procs = [multiprocessing.Process(target=emit_share,
                                         args=(ids, rate, seconds, start_at, i, processes, done))
                 for i in range(processes)]
        for p in procs:
            p.start()
        emitted = sum(done.get() for _ in procs)
        for p in procs:
            p.join()
        print(json.dumps({"emitted": emitted, "seconds": time.time() - start_at}), flush=True)
    for task_id in ids:
        store.append(task_id, state=protocol.SUCCEEDED, progress=100, message="bench done",
                     result={})


main()

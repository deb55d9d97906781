"""Event source for `make bench`, run inside a worker container with the worker's
own store and Flask-SocketIO external emitter:

    docker compose exec -T worker python - OWNER TASKS < tests/bench/emit_driver.py

Creates TASKS running tasks owned by OWNER and prints their ids as one JSON line.
Then, for every line `RATE SECONDS MODE` read from stdin, emits progress events
round-robin over the tasks at RATE events/s for SECONDS (split over PROCESSES
emitters, paced in 10 ms ticks) and prints `{"emitted": n, "seconds": s}`.
An empty line ends it and ends the tasks. MODE is one of:

- `emit`: ``Emitter.emit`` per event, exactly what a job's ``progress.update``
  does (persist, then publish): two Redis round trips each;
- `persist`: the same two steps, each tick's events sent as two pipelines (the
  appends, then the external emitter's publishes), so one process can offer the
  rates the web side has to be measured at;
- `publish`: the external emitter's publishes only, pipelined: the load Node's
  `@socket.io/redis-emitter` puts on a socket.io server, for comparing web processes.
"""
import json
import multiprocessing
import sys
import time

from taskbeam import protocol, worker

PROCESSES = 2
TICKS_PER_S = 100


class Batched:
    """Redirects the external emitter's publishes into a pipeline for one tick."""

    def __init__(self, pipe):
        self.manager = worker.emitter.socketio.server.manager
        self.pipe = pipe

    def __enter__(self):
        if not self.manager.connected:
            self.manager._redis_connect()
        self.real, self.manager.redis = self.manager.redis, self.pipe

    def __exit__(self, *exc):
        self.manager.redis = self.real


def emit_batch(task_ids, first, count, progress, mode):
    store, emitter = worker.store, worker.emitter
    if mode == "emit":
        for i in range(first, first + count):
            emitter.emit(task_ids[i % len(task_ids)], progress=progress, message="bench")
        return
    now = time.time()
    targets = [task_ids[i % len(task_ids)] for i in range(first, first + count)]
    if mode == "persist":
        pipe = store.redis.pipeline(transaction=False)
        args = [f"{now:.6f}", protocol.iso_utc(now), store.maxlen, store.retention_s,
                "progress", repr(float(progress)), "message", "bench"]
        for task_id in targets:
            store._append(keys=[store.task_key(task_id), store.events_key(task_id)], args=args,
                          client=pipe)
        events = [json.loads(reply[1]) for reply in pipe.execute()]
    else:
        events = [{"task_id": t, "seq": first + n + 1000, "state": protocol.RUNNING,
                   "progress": float(progress), "message": "bench", "ts": now}
                  for n, t in enumerate(targets)]
    pipe = store.redis.pipeline(transaction=False)
    with Batched(pipe):
        for event in events:
            emitter.socketio.emit(protocol.TASK_UPDATE_EVENT, event,
                                  to=protocol.task_room(event["task_id"]))
    pipe.execute()


def emit_share(task_ids, rate, seconds, mode, start_at, index, processes, done):
    """One emitter process: its share of the tasks and of the rate."""
    share = task_ids[index::processes]
    per_tick = rate / processes / TICKS_PER_S
    sent, owed, tick = 0, 0.0, 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < start_at + seconds:
        owed += per_tick
        count = int(owed)
        if count:
            emit_batch(share, sent, count, (sent // len(share)) % 100, mode)
            sent += count
            owed -= count
        tick += 1
        pause = start_at + tick / TICKS_PER_S - time.time()
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
        rate, seconds, mode = float(line.split()[0]), float(line.split()[1]), line.split()[2]
        done = multiprocessing.Queue()
        start_at = time.time() + 0.2
        processes = min(PROCESSES, len(ids))
        procs = [multiprocessing.Process(target=emit_share, args=(
            ids, rate, seconds, mode, start_at, i, processes, done)) for i in range(processes)]
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

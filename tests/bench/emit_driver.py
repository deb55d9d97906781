"""Event source for `make bench`, run inside a worker container with the worker's
own store and Flask-SocketIO external emitter:

    docker compose exec -T worker python - OWNER TASKS < tests/bench/emit_driver.py

Creates TASKS running tasks owned by OWNER and prints their ids as one JSON line.
Then, for every line `RATE SECONDS MODE` read from stdin, emits progress events
round-robin over the tasks at RATE events/s for SECONDS (split over PROCESSES
emitters, paced in 10 ms ticks) and prints `{"emitted": n, "seconds": s}`.
An empty line ends it and deletes the tasks. MODE is one of:

- `emit`: ``Emitter.emit`` per event, exactly what a job's ``progress.update``
  does (persist, then publish): two Redis round trips each;
- `persist`: the same two steps, each tick's events sent as two batches (the
  Lua appends, then the publishes), so one process can offer the rates the web
  side has to be measured at;
- `publish`: the publishes only: the load Node's `@socket.io/redis-emitter` puts
  on a socket.io server, for comparing web processes.

The batched modes write RESP themselves (:class:`Raw`) and publish the external
emitter's own message, from a template checked at start against what the
emitter really publishes (:class:`Envelopes`).
"""

import json
import multiprocessing
import sys
import time

import hiredis

from taskbeam import protocol, worker

PROCESSES = 2
TICKS_PER_S = 100
TOKENS = {}  # task id -> run token; the emitter processes inherit it (fork)


class Raw:
    """One Redis connection written in RESP and read with hiredis: each tick's
    commands go out in one send, as a redis-py pipeline would send them, without
    redis-py's Python per command, so the driver is not what the bench measures."""

    def __init__(self, redis):
        self.connection = redis.connection_pool.get_connection()  # authenticated, its db
        self.reader = hiredis.Reader(encoding="utf-8")

    @staticmethod
    def command(*parts):
        out = [b"*%d\r\n" % len(parts)]
        for part in parts:
            part = part if isinstance(part, bytes) else str(part).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(part), part))
        return b"".join(out)

    def run(self, commands):
        sock = self.connection._sock
        sock.sendall(b"".join(commands))
        replies = []
        while len(replies) < len(commands):
            reply = self.reader.gets()
            if reply is False:
                self.reader.feed(sock.recv(1 << 20))
            elif isinstance(reply, hiredis.ReplyError):
                raise reply
            else:
                replies.append(reply)
        return replies


class Envelopes:
    """The external emitter's message for a task event, as a template per task.

    Checked at start against what Flask-SocketIO's external emitter really
    publishes, so the bytes on the channel are the emitter's own."""

    def __init__(self, task_ids):
        manager = worker.emitter.socketio.server.manager
        self.channel = manager.channel
        self.templates = {}
        for task_id in task_ids:
            message = {
                "method": "emit",
                "event": protocol.TASK_UPDATE_EVENT,
                "data": ["@"],
                "binary": False,
                "namespace": "/",
                "room": protocol.task_room(task_id),
                "skip_sid": None,
                "callback": None,
                "host_id": manager.host_id,
            }
            self.templates[task_id] = manager.json.dumps(message).split('"@"')
        sample = {
            "task_id": task_ids[0],
            "seq": 1,
            "state": protocol.RUNNING,
            "progress": 1.0,
            "message": "bench",
            "ts": time.time(),
        }
        assert self.of(task_ids[0], json.dumps(sample)) == self.real(manager, sample)

    @staticmethod
    def real(manager, event):
        published = []

        class Capture:
            def publish(self, channel, data):
                published.append(data)

        if not manager.connected:
            manager._redis_connect()
        real, manager.redis = manager.redis, Capture()
        try:
            worker.emitter.socketio.emit(
                protocol.TASK_UPDATE_EVENT, event, to=protocol.task_room(event["task_id"])
            )
        finally:
            manager.redis = real
        return published[0]

    def of(self, task_id, event_json):
        head, tail = self.templates[task_id]
        return head + event_json + tail


def emit_batch(raw, envelopes, task_ids, first, count, progress, mode):
    store, emitter = worker.store, worker.emitter
    if mode == "emit":
        for i in range(first, first + count):
            task_id = task_ids[i % len(task_ids)]
            emitter.emit(task_id, token=TOKENS[task_id], progress=progress, message="bench")
        return
    now = time.time()
    targets = [task_ids[i % len(task_ids)] for i in range(first, first + count)]
    if mode == "persist":
        # What TaskStore.append sends for a run's event: its token and an emit id.
        head = (f"{now:.6f}", protocol.iso_utc(now), store.maxlen, store.retention_s)
        tail = (store.owner_key(""), "progress", repr(float(progress)), "message", "bench")
        replies = raw.run(
            [
                raw.command(
                    "EVALSHA",
                    store._append.sha,
                    5,
                    store.task_key(t),
                    store.events_key(t),
                    store.leases_key,
                    store.active_key,
                    store.queued_key,
                    *head,
                    store.new_emit_id(),
                    TOKENS[t],
                    *tail,
                )
                for t in targets
            ]
        )
        events = [reply[1] for reply in replies]  # the event JSON the Lua append wrote
    else:
        events = [
            json.dumps(
                {
                    "task_id": t,
                    "seq": first + n + 1000,
                    "state": protocol.RUNNING,
                    "progress": float(progress),
                    "message": "bench",
                    "ts": now,
                }
            )
            for n, t in enumerate(targets)
        ]
    raw.run(
        [
            raw.command("PUBLISH", envelopes.channel, envelopes.of(t, e))
            for t, e in zip(targets, events)
        ]
    )


def emit_share(task_ids, envelopes, rate, seconds, mode, start_at, index, processes, done):
    """One emitter process: its share of the tasks and of the rate."""
    share = task_ids[index::processes]
    raw = Raw(worker.store.redis) if mode != "emit" else None
    per_tick = rate / processes / TICKS_PER_S
    sent, owed, tick = 0, 0.0, 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < start_at + seconds:
        owed += per_tick
        count = int(owed)
        if count:
            emit_batch(raw, envelopes, share, sent, count, (sent // len(share)) % 100, mode)
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
        # Each task as a worker's run holds it: a lease and its token.
        TOKENS[task["id"]] = store.claim_run(task["id"], 24 * 3600)
        store.append(task["id"], token=TOKENS[task["id"]], state=protocol.RUNNING, message="bench")
        ids.append(task["id"])
    envelopes = Envelopes(ids)
    print(json.dumps({"task_ids": ids}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        rate, seconds, mode = float(line.split()[0]), float(line.split()[1]), line.split()[2]
        done = multiprocessing.Queue()
        start_at = time.time() + 0.2
        processes = min(PROCESSES, len(ids))
        procs = [
            multiprocessing.Process(
                target=emit_share,
                args=(ids, envelopes, rate, seconds, mode, start_at, i, processes, done),
            )
            for i in range(processes)
        ]
        for p in procs:
            p.start()
        emitted = sum(done.get() for _ in procs)
        for p in procs:
            p.join()
        print(json.dumps({"emitted": emitted, "seconds": time.time() - start_at}), flush=True)
    for task_id in ids:  # the bench leaves nothing behind in the store
        store.delete(task_id, owner)


main()

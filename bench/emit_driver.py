"""Event source for `make bench`, run inside a worker container with the worker's
own store and Flask-SocketIO external emitter:

    docker compose exec -T worker python - OWNER TASKS < bench/emit_driver.py

Creates TASKS running tasks owned by OWNER and prints their ids as one JSON line.
Then, for every line `RATE SECONDS MODE [PUBLISH]` read from stdin, emits progress
events round-robin over the tasks at RATE events/s for SECONDS (split over PROCESSES
emitters, paced in 10 ms ticks) and prints `{"emitted": n, "seconds": s}`.
`channel main` makes the store publish task events to the main channel (as while
a web process reads only that one: every web process reads every event), `channel
rooms` back to the rooms' channels. An empty line ends it and deletes the tasks.
MODE is one of:

- `emit`: ``Emitter.emit`` per event, exactly what a job's ``progress.update``
  does (persist and publish);
- `persist`: the same, each tick's events sent as one batch of Lua appends (and,
  publishing after the append, a second batch of publishes), so one process can
  offer the rates the web side has to be measured at;
- `publish`: the publishes only, to each task's room channel as the worker's
  path sends them: the web side's load without the store's;
- `stock`: the publishes only, made by a stock Flask-SocketIO external emitter
  (``SocketIO(message_queue=...)``) per event and sent through a redis-py
  pipeline per tick: what anyone's own emitter would send.

PUBLISH, for `emit` and `persist`: `in-append` (the worker's path: the Lua append
publishes; the default) or `after-append` (a second step after it, the path a
writer that waits for replicas takes; in Sentinel mode `persist` sends each append's
WAIT after it, as the store does). `persist` and `publish` write RESP
themselves (:class:`Raw`) and publish the external emitter's own message
(:class:`taskbeam.emitter.StockEnvelope`, made by the library).
"""

import json
import multiprocessing
import sys
import time

import hiredis
from flask_socketio import SocketIO

import redis
from taskbeam import protocol, worker
from taskbeam.emitter import Emitter, StockEnvelope

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


def emit_batch(raw, envelope, sender, task_ids, first, count, progress, mode, in_append):
    """``sender``: the `emit` mode's Emitter, the `stock` mode's SocketIO."""
    store = worker.store
    now = time.time()
    targets = [task_ids[i % len(task_ids)] for i in range(first, first + count)]
    if mode == "emit":
        for task_id in targets:
            sender.emit(task_id, token=TOKENS[task_id], progress=progress, message="bench")
        return
    if mode == "stock":
        pipe = raw.pipeline(transaction=False)
        # The emitter's own Redis client replaced by a pipeline: its publishes queue there.
        sender.server.manager.redis, sender.server.manager.connected = pipe, True
        for n, task_id in enumerate(targets):
            event = {
                "task_id": task_id,
                "seq": first + n + 1000,
                "state": protocol.RUNNING,
                "progress": float(progress),
                "message": "bench",
                "ts": now,
            }
            sender.emit(protocol.TASK_UPDATE_EVENT, event, to=protocol.task_room(task_id))
        pipe.execute()
        return
    if mode == "persist":
        # What TaskStore.append sends for a run's event: its token and an emit id.
        # Sentinel mode: each append followed by its WAIT for replicas, as the store does.
        wait = [raw.command("WAIT", store.wait_replicas, store.wait_timeout_ms)]
        appends = []
        for t in targets:
            keys, args = store.append_call(
                t,
                now,
                token=TOKENS[t],
                emit_id=store.new_emit_id(),
                publish=envelope.around(t) if in_append else None,
                progress=progress,
                message="bench",
            )
            appends.append(raw.command("EVALSHA", store._append.sha, len(keys), *keys, *args))
        step = 2 if store.wait_replicas else 1
        replies = raw.run([c for a in appends for c in [a] + wait * (step - 1)])[::step]
        if in_append:
            return
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
    commands = []
    for task_id, event in zip(targets, events):
        _channel, room_channel, head, tail = envelope.around(task_id)[:4]
        commands.append(raw.command("PUBLISH", room_channel, head + event + tail))
    raw.run(commands)


def emit_share(task_ids, rate, seconds, mode, publish, start_at, index, processes, done):
    """One emitter process: its share of the tasks and of the rate."""
    share = task_ids[index::processes]
    envelope = StockEnvelope(worker.emitter.socketio)
    in_append = publish == "in-append"
    raw = Raw(worker.store.redis) if mode in ("persist", "publish") else None
    sender = None
    if mode == "emit":
        sender = Emitter(worker.store, worker.emitter.socketio, store_publishes=in_append)
    elif mode == "stock":
        settings = worker.settings
        raw = redis.Redis.from_url(settings.redis_url)
        sender = SocketIO(message_queue=settings.redis_url, channel=settings.socketio_channel)
    per_tick = rate / processes / TICKS_PER_S
    sent, owed, tick = 0, 0.0, 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < start_at + seconds:
        owed += per_tick
        count = int(owed)
        if count:
            progress = (sent // len(share)) % 100
            emit_batch(raw, envelope, sender, share, sent, count, progress, mode, in_append)
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
    print(json.dumps({"task_ids": ids}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        if line.startswith("channel "):
            if line.split()[1] == "main":
                store.redis.set(store.keys.main_only, "bench", ex=3600)
            else:
                store.redis.delete(store.keys.main_only)
            print(json.dumps({"channel": line.split()[1]}), flush=True)
            continue
        rate, seconds, mode, *publish = line.split()
        rate, seconds, publish = float(rate), float(seconds), (publish or ["in-append"])[0]
        done = multiprocessing.Queue()
        start_at = time.time() + 0.2
        processes = min(PROCESSES, len(ids))
        procs = [
            multiprocessing.Process(
                target=emit_share,
                args=(ids, rate, seconds, mode, publish, start_at, i, processes, done),
            )
            for i in range(processes)
        ]
        for p in procs:
            p.start()
        emitted = sum(done.get() for _ in procs)
        for p in procs:
            p.join()
        print(json.dumps({"emitted": emitted, "seconds": time.time() - start_at}), flush=True)
    store.redis.delete(store.keys.main_only)
    for task_id in ids:  # the bench leaves nothing behind in the store
        store.delete(task_id, owner)


main()

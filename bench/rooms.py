"""One event to each of N rooms, again after churn: the web's p99 with many rooms.

N clients through ``--url``, each subscribed to a task of its own (so the web
process holds N rooms and their channels), then rounds of: one event published to
each room's channel (as the store publishes a task event), the receive lag of
each (now - the event's ``ts``), then ``--churn`` clients closed and replaced by
new ones subscribed to new tasks (a long-lived web's opens and closes). Reads
the web's GC figures from /metrics after each round.

Needs the Redis the web reads (``--redis-url``, with the web's settings in the
environment): run against a web started by hand, e.g.

    REDIS_URL=... SECRET_KEY=... gunicorn -c web/gunicorn.conf.py -b 127.0.0.1:8000 \\
        'taskbeam.web:create_app()'
    python bench/rooms.py --url http://127.0.0.1:8000 --redis-url redis://...
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import time
import urllib.request

from sioclient import Client, owner_of, session_cookie

import redis
from taskbeam import config, protocol
from taskbeam.store import TaskStore


def pct(values, q):
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else None


def gc_figures(url):
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found = re.findall(
        r'taskbeam_gc_(collections_total|pause_seconds_total)\{generation="2"\} (\S+)', text
    )
    figures = {name: float(value) for name, value in found}
    figures["lag_last"] = float(re.search(r"^taskbeam_mq_lag_seconds_last (\S+)", text, re.M)[1])
    return figures


def cpu_s(pid):
    """User + system CPU seconds of a local process (0 without one)."""
    if not pid:
        return 0.0
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Rooms:
    def __init__(self, url, store, owner, cookie):
        self.url, self.store, self.owner, self.cookie = url, store, owner, cookie
        self.clients = {}  # task id -> client
        self.lags, self.seq = [], 1000
        self.rate = 0

    def on_event(self, name, data):
        if name == "task_update" and data.get("message") == "rooms":
            self.lags.append((time.time() - data["ts"]) * 1000)

    async def open(self, count, batch=200):
        for start in range(0, count, batch):
            n = min(batch, count - start)
            tasks = [
                self.store.create(kind="simulate", owner=self.owner, params={}) for _ in range(n)
            ]
            clients = await asyncio.gather(
                *(Client(self.url, self.cookie, self.on_event).connect() for _ in range(n))
            )
            acks = await asyncio.gather(
                *(
                    c.call("subscribe", {"task_id": t["id"], "after": 0})
                    for c, t in zip(clients, tasks)
                )
            )
            assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]][:1]
            self.clients.update((t["id"], c) for c, t in zip(clients, tasks))

    async def churn(self, count):
        gone = list(self.clients)[:count]
        await asyncio.gather(*(self.clients.pop(t).close() for t in gone))
        for task_id in gone:
            self.store.delete(task_id, self.owner)
        await self.open(count)

    async def one_event_each(self, redis_client, channel):
        """Publish one event to each room at once; the lags."""
        self.lags = []
        self.seq += 1
        stamp = "1234567.891011"  # replaced by the time of sending, in every message
        commands = []
        for task_id in self.clients:
            room = protocol.task_room(task_id)
            event = {
                "task_id": task_id,
                "seq": self.seq,
                "state": "running",
                "progress": 1.0,
                "message": "rooms",
                "ts": float(stamp),
            }
            message = protocol.mq_emit_message(protocol.TASK_UPDATE_EVENT, event, room, "rooms")
            commands.append((protocol.room_channel(channel, room), message))
        # In 10-ms ticks at `rate` events/s (0: all at once), each tick's ts its own.
        per_tick = len(commands) if not self.rate else max(1, self.rate // 100)
        connection = redis_client.connection_pool.get_connection()
        try:
            started = time.monotonic()
            for tick, first in enumerate(range(0, len(commands), per_tick)):
                pause = started + tick / 100 - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                batch = commands[first : first + per_tick]
                now = repr(time.time())
                packed = b"".join(
                    b"".join(connection.pack_command("PUBLISH", ch, msg.replace(stamp, now)))
                    for ch, msg in batch
                )
                connection.send_packed_command([packed])
                for _ in batch:
                    connection.read_response()
        finally:
            redis_client.connection_pool.release(connection)
        deadline = time.monotonic() + 30
        while len(self.lags) < len(self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {
            "received": len(self.lags),
            "p50_ms": pct(self.lags, 0.5),
            "p99_ms": pct(self.lags, 0.99),
            "max_ms": pct(self.lags, 1.0),
        }


async def main(args):
    settings = config.current()
    client = redis.Redis.from_url(args.redis_url)
    store = TaskStore(client, settings)
    cookie = session_cookie(args.url)
    rooms = Rooms(args.url, store, owner_of(cookie), cookie)
    rooms.rate = args.rate
    started = time.monotonic()
    await rooms.open(args.clients)
    print(
        f"{args.clients} clients open and subscribed in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    rounds = []
    for number in range(args.rounds):
        before = gc_figures(args.url)
        cpu = cpu_s(args.web_pid)
        figures = await rooms.one_event_each(client, settings.socketio_channel)
        if args.web_pid:
            used = cpu_s(args.web_pid) - cpu
            figures["web_cpu_us_per_event"] = round(used / len(rooms.clients) * 1e6, 1)
        after = gc_figures(args.url)
        figures["full_gcs"] = after["collections_total"] - before["collections_total"]
        figures["full_gc_ms"] = round(
            (after["pause_seconds_total"] - before["pause_seconds_total"]) * 1000, 1
        )
        # The web's own lag of the last event: ts to its listener handling it (all its
        # recipients written or queued), without this process's reading of them.
        figures["web_last_ms"] = round(after["lag_last"] * 1000, 1)
        figures["round"] = number
        print(json.dumps(figures), flush=True)
        rounds.append(figures)
        if number + 1 < args.rounds:
            await rooms.churn(args.churn)
    for key in ("p99_ms", "web_last_ms", "full_gc_ms", "web_cpu_us_per_event"):
        values = [r[key] for r in rounds if key in r]
        if not values:
            continue
        print(f"{key} per round: {values} median {statistics.median(values)}", flush=True)
    figures = gc_figures(args.url)  # the web's whole life: opens, closes and rounds
    mean_ms = figures["pause_seconds_total"] / max(1, figures["collections_total"]) * 1000
    print(f"full GCs so far: {figures['collections_total']:g}, mean {mean_ms:.1f} ms", flush=True)
    await asyncio.gather(*(c.close() for c in rooms.clients.values()))
    for task_id in rooms.clients:
        store.delete(task_id, rooms.owner)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rate", type=int, default=2000, help="events/s (0: all at once)")
    parser.add_argument("--web-pid", type=int, help="the web worker's pid: its CPU per event")
    parser.add_argument("--churn", type=int, default=2000, help="clients replaced between rounds")
    asyncio.run(main(parser.parse_args()))

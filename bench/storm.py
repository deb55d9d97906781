"""The reconnect storm (`make bench`; tests/integration/test_storm.py runs a small one).

N clients, each connected through Nginx and subscribed to a task that is running
(events persisted and published by bench/emit_driver.py in a worker), then a
fault: `docker compose restart web`, or `kill -9` of the web's Gunicorn worker (its
master starts another). Every client reconnects as the page does (socket.io-client
4's Manager defaults, which web/static/app.js keeps: a first delay of 1 s, doubled
per failed attempt up to 5 s, each +-50 % at random; a Socket.IO refusal is retried
after 1 s, as the page's `connect_error` handler does), resubscribes with `after` =
the last seq it applied, pages through `more`, and resubscribes on a gap.

Measured per fault: when the web answered /readyz again (through Nginx), when every
client was back (resubscribed, caught up: its ack said `more: false`), the web's
Docker health checks and a /readyz probe of our own during it, and the lag of the
live events (receive time - the event's `ts`) per second. At the end every client's
last seq must equal its task's (no gap, nothing lost).

    python bench/storm.py [--url URL] [--clients N] [--tasks T] [--faults F ...]
"""

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import signal
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import websockets
from sioclient import owner_of, session_cookie
from stack import compose, container_url, containers, start_emit_driver

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# socket.io-client 4's Manager defaults (the page sets none of them).
RECONNECTION_DELAY_S, RECONNECTION_DELAY_MAX_S, RANDOMIZATION_FACTOR = 1.0, 5.0, 0.5
CONNECT_TIMEOUT_S = 20.0  # the Manager's `timeout`
REFUSED_RETRY_S = 1.0  # app.js: `if (!socket.active) setTimeout(() => socket.connect(), 1000)`
FAULTS = ("restart", "kill")


def reconnect_delay(attempts: int) -> float:
    """socket.io-client's ``Backoff.duration()`` for the ``attempts``-th retry."""
    ms = RECONNECTION_DELAY_S * 1000 * 2 ** min(attempts, 16)
    rand = random.random()
    deviation = math.floor(rand * RANDOMIZATION_FACTOR * ms)
    ms = ms - deviation if math.floor(rand * 10) & 1 == 0 else ms + deviation
    return min(ms, RECONNECTION_DELAY_MAX_S * 1000) // 1 / 1000


class Refused(Exception):
    """The server answered the Socket.IO CONNECT with CONNECT_ERROR."""


class Lags:
    """Live events' lag, in one-second buckets from ``start``."""

    def __init__(self):
        self.start = time.monotonic()
        self.buckets: dict[int, list[float]] = {}

    def add(self, ts):
        if isinstance(ts, (int, float)):
            second = int(time.monotonic() - self.start)
            self.buckets.setdefault(second, []).append((time.time() - ts) * 1000)

    def between(self, first_s, last_s):
        return [v for s, vs in self.buckets.items() if first_s <= s <= last_s for v in vs]


class StormClient:
    """One page's socket: connect, subscribe to ``task_id`` from its last seq, keep it."""

    def __init__(self, url, cookie, task_id, lags):
        self.url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.origin, self.cookie, self.task_id, self.lags = url, cookie, task_id, lags
        self.last_seq = 0
        self.attempts = 0  # failed reconnection attempts since the last success
        self.caught_up_at = None  # monotonic: the last ack that left nothing to page
        self.dropped_at = None  # monotonic: the last time the connection ended
        self.drops = self.failures = self.refusals = self.gaps = 0
        self.ws = None
        self.ack_ids = 0
        self.last_error = None  # the last failed attempt's or refused ack's, for reports
        self.pending, self.held = False, []  # a subscribe in flight; live events meanwhile

    @property
    def caught_up(self):
        return self.caught_up_at is not None and (
            self.dropped_at is None or self.caught_up_at > self.dropped_at
        )

    async def run(self, stop: asyncio.Event):
        while not stop.is_set():
            delay = None
            try:
                await self.session(stop)
                delay = reconnect_delay(self.attempts)  # a drop: the Manager's first retry
                self.attempts += 1
            except Refused as exc:
                self.last_error = str(exc)[:120]
                self.refusals += 1
                delay = REFUSED_RETRY_S
            except (TimeoutError, OSError, websockets.WebSocketException, EOFError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:120]
                self.failures += 1
                delay = reconnect_delay(self.attempts)
                self.attempts += 1
            if self.ws is not None:
                self.drops += 1
                self.dropped_at = time.monotonic()
                self.ws = None
            if not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass

    async def session(self, stop):
        ws = await websockets.connect(
            self.url,
            origin=self.origin,
            additional_headers={"Cookie": self.cookie},
            open_timeout=CONNECT_TIMEOUT_S,
            close_timeout=1,
            max_size=2**22,
            compression=None,
            ping_interval=None,
        )
        try:
            opened = await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S)
            if not opened.startswith("0"):
                raise EOFError(f"no engine.io OPEN: {opened[:80]}")
            self.attempts = 0  # the Manager resets its backoff once the transport opens
            self.ws = ws
            self.pending, self.held = False, []
            await ws.send("40")
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    frame = asyncio.ensure_future(ws.recv())
                    done, _ = await asyncio.wait({frame, stopping}, return_when="FIRST_COMPLETED")
                    if frame not in done:
                        frame.cancel()
                        return
                    await self.handle(frame.result())
            finally:
                stopping.cancel()
        except websockets.ConnectionClosed:
            return
        finally:
            await ws.close()

    async def handle(self, frame):
        if frame == "2":
            await self.ws.send("3")
        elif frame.startswith("40"):
            await self.subscribe()
        elif frame.startswith("44"):
            raise Refused(frame)
        elif frame.startswith("42"):
            name, *args = json.loads(frame[2:])
            if name == "task_update" and args:
                self.live(args[0])
        elif frame.startswith("43"):
            body = frame[2:]
            await self.acked(json.loads(body[body.index("[") :])[0])

    async def subscribe(self):
        # Live events that come before the ack are held and applied after `missed`.
        self.pending = True
        self.ack_ids += 1
        data = {"task_id": self.task_id, "after": self.last_seq}
        await self.ws.send(f"42{self.ack_ids}" + json.dumps(["subscribe", data]))

    def apply(self, event):
        seq = event.get("seq")
        if seq == self.last_seq + 1:
            self.last_seq = seq
            return True
        return False

    def live(self, event):
        if self.pending:
            self.held.append(event)
            return
        seq = event.get("seq", 0)
        if seq > self.last_seq + 1:  # a gap: the page subscribes again from its last seq
            self.gaps += 1
            self.pending = True  # what comes until its ack is held
            asyncio.ensure_future(self.subscribe())
        elif self.apply(event):
            self.lags.add(event.get("ts"))

    async def acked(self, ack):
        if not ack.get("ok"):  # rate_limited, unavailable: again shortly
            self.last_error = json.dumps(ack)[:120]
            wait = ack.get("error", {}).get("retry_after", 1.0)
            await asyncio.sleep(min(float(wait), 5.0))
            await self.subscribe()
            return
        for event in ack["missed"]:
            self.apply(event)
        if ack["more"]:
            await self.subscribe()
            return
        self.pending = False
        held, self.held = self.held, []
        for event in sorted(held, key=lambda event: event.get("seq", 0)):
            self.live(event)
        if not self.pending:  # no gap among them
            self.caught_up_at = time.monotonic()


class Health:
    """A thread recording, until stopped: /readyz through ``url`` (the clients' way in)
    and the web container's own Docker health checks (each once)."""

    def __init__(self, url, interval_s=0.25):
        self.url, self.interval_s = url, interval_s
        self.probes = []  # (monotonic, status or error, seconds)
        self.checks = {}  # Docker's Start -> {"exit": code, "at": monotonic}
        self.statuses = []  # (monotonic, Docker's health status) on change
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(30)

    def run(self):
        last_inspect = 0.0
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=10) as answer:
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                status = type(exc).__name__
            self.probes.append((started, status, time.monotonic() - started))
            if started - last_inspect >= 1.0:
                last_inspect = started
                self.inspect()
            self.stopped.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def inspect(self):
        for cid in containers("web"):
            done = subprocess.run(
                ["docker", "inspect", "-f", "{{json .State.Health}}", cid],
                capture_output=True,
                text=True,
            )
            try:
                health = json.loads(done.stdout)
            except ValueError:
                continue
            if not health:
                continue
            now = time.monotonic()
            if not self.statuses or self.statuses[-1][1] != health["Status"]:
                self.statuses.append((now, health["Status"]))
            for entry in health.get("Log") or []:
                at = now - (time.time() - docker_time(entry["Start"]))  # on our clock
                self.checks.setdefault(entry["Start"], {"exit": entry["ExitCode"], "at": at})

    def ready_again(self, since):
        """When /readyz answered 200 after the last failure since ``since`` (or ``since``)."""
        ready, failing = since, False
        for at, status, _ in self.probes:
            if at < since:
                continue
            if status != 200:
                failing = True
            elif failing:
                ready, failing = at, False
        return ready


def docker_time(text):
    """Seconds since the epoch of Docker's ``2026-01-02T03:04:05.123456789Z``."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    fraction = fraction[:6].split("+")[0].split("-")[0]
    stamp = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
    return stamp.timestamp() + (float("0." + fraction) if fraction else 0.0)


def gunicorn_worker_pid():
    """The host pid of the web container's Gunicorn worker (the master's child)."""
    (cid,) = containers("web")
    rows = subprocess.run(
        ["docker", "top", cid, "-o", "pid,ppid,args"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[1:]
    procs = [row.split(None, 2) for row in rows]
    pids = {pid for pid, _ppid, _args in procs}
    workers = [int(pid) for pid, ppid, args in procs if ppid in pids and "gunicorn" in args]
    if len(workers) != 1:
        raise RuntimeError(f"expected one Gunicorn worker in web, found {procs}")
    return workers[0]


def inject(fault):
    """Run ``fault`` (blocking until Docker or the kernel has done it)."""
    if fault == "restart":
        compose("restart", "web", timeout=180)
    elif fault == "kill":
        os.kill(gunicorn_worker_pid(), signal.SIGKILL)
    else:
        raise ValueError(fault)


class Feed:
    """Events for the tasks, in a worker (emit_driver.py, `persist`: stored with a
    seq, then published, as a job's), in 2-s steps until stopped."""

    def __init__(self, owner, tasks, rate):
        self.proc, self.task_ids = start_emit_driver(owner, tasks)
        self.rate, self.emitted = rate, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stopped.is_set():
            self.proc.stdin.write(f"{self.rate} 2 persist\n")
            self.proc.stdin.flush()
            self.emitted += json.loads(self.proc.stdout.readline())["emitted"]

    def stop(self):
        self.stopped.set()
        self.thread.join(30)

    def close(self):
        self.proc.stdin.write("\n")  # deletes the tasks
        self.proc.stdin.flush()
        self.proc.wait(120)
        self.proc.stdin.close()
        self.proc.stdout.close()


def task_seqs(url, cookie, task_ids):
    """Each task's seq as the API says (its last stored event)."""
    seqs = {}
    for task_id in task_ids:
        request = urllib.request.Request(f"{url}/api/tasks/{task_id}", headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=10) as answer:
            seqs[task_id] = json.loads(answer.read())["seq"]
    return seqs


async def until(predicate, timeout_s, what, clients=(), interval_s=0.1):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout_s} s waiting for {what}: {state(clients)}"
            )
        await asyncio.sleep(interval_s)


def state(clients):
    """What the clients are doing, for a timeout's message."""
    return {
        "connected": sum(1 for c in clients if c.ws is not None),
        "caught_up": sum(1 for c in clients if c.caught_up),
        "failed_attempts": sum(c.failures for c in clients),
        "refusals": sum(c.refusals for c in clients),
        "last_errors": sorted({c.last_error for c in clients if c.last_error})[:5],
    }


def pct(values, q):
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


async def storm(clients, health, fault, lags, back_timeout_s):
    """One fault; the figures."""
    t0 = time.monotonic()
    await asyncio.to_thread(inject, fault)
    injected = time.monotonic()
    # Every client must notice the drop: for a kill at once; for a restart when
    # Gunicorn's graceful stop ends the connections.
    await until(
        lambda: all(c.dropped_at and c.dropped_at > t0 for c in clients),
        back_timeout_s,
        "every client to see its connection end",
    )
    await until(
        lambda: all(c.caught_up for c in clients), back_timeout_s, "every client back", clients
    )
    back = max(c.caught_up_at for c in clients)
    ready = health.ready_again(t0)
    first_drop = min(c.dropped_at for c in clients)
    during = lags.between(int(t0 - lags.start), int(back - lags.start) + 1)
    probes = [(status, seconds) for at, status, seconds in health.probes if t0 <= at <= back]
    return {
        "fault": fault,
        "clients": len(clients),
        "inject_s": round(injected - t0, 2),
        "web_ready_s": round(ready - t0, 2),
        "all_back_s": round(back - t0, 2),
        "all_back_after_ready_s": round(back - max(ready, first_drop), 2),
        "back_p50_s": round(statistics.median(c.caught_up_at - t0 for c in clients), 2),
        "failed_attempts": sum(c.failures for c in clients),
        "refusals": sum(c.refusals for c in clients),
        "gaps_resubscribed": sum(c.gaps for c in clients),
        "live_lag_ms": {"p50": pct(during, 0.5), "p99": pct(during, 0.99), "n": len(during)},
        "readyz_probes": {
            "n": len(probes),
            "not_200": sum(1 for status, _ in probes if status != 200),
            "max_s": round(max((s for _, s in probes), default=0), 3),
        },
    }


def health_summary(health, since, ready):
    """Docker's checks of web that started from ``since`` on; failed ones, also those
    that started once /readyz answered again (``ready``): a web that works."""
    checks = [c for c in health.checks.values() if c["at"] >= since]
    return {
        "docker_checks": len(checks),
        "docker_checks_failed": sum(1 for c in checks if c["exit"] != 0),
        "docker_checks_failed_when_ready": sum(
            1 for c in checks if c["exit"] != 0 and c["at"] >= ready
        ),
        "docker_statuses": [status for at, status in health.statuses if at >= since],
    }


async def run(url, n_clients, n_tasks, rate, faults, back_timeout_s=120):
    """Open the clients, then each fault in turn; the result."""
    cookie = await asyncio.to_thread(session_cookie, url)
    feed = await asyncio.to_thread(Feed, owner_of(cookie), n_tasks, rate)
    lags = Lags()
    stop = asyncio.Event()
    clients = [StormClient(url, cookie, feed.task_ids[i % n_tasks], lags) for i in range(n_clients)]
    result = {"url": url, "clients": n_clients, "tasks": n_tasks, "rate": rate, "storms": []}
    runners = []
    try:
        feed.thread.start()
        with Health(url) as health:
            opened = time.monotonic()
            for start in range(0, n_clients, 200):  # as bench.py: batches of 200
                runners += [
                    asyncio.ensure_future(c.run(stop)) for c in clients[start : start + 200]
                ]
                await asyncio.sleep(0.05)
            await until(
                lambda: all(c.caught_up for c in clients), 300, "every client subscribed", clients
            )
            result["open_and_subscribe_s"] = round(time.monotonic() - opened, 2)
            for fault in faults:
                await asyncio.sleep(2)  # a steady state to compare the lag against
                since = time.monotonic()
                figures = await storm(clients, health, fault, lags, back_timeout_s)
                await asyncio.sleep(3)  # live events after the storm, to the last client
                ready = since + figures["web_ready_s"]
                figures.update(health_summary(health, since, ready))
                print(json.dumps(figures), flush=True)
                result["storms"].append(figures)
        feed.stop()
        seqs = await asyncio.to_thread(task_seqs, url, cookie, feed.task_ids)
        await until(
            lambda: all(c.last_seq == seqs[c.task_id] for c in clients), 30, "the last events"
        )
        result["events_emitted"] = feed.emitted
        result["clients_behind_at_end"] = sum(1 for c in clients if c.last_seq != seqs[c.task_id])
    finally:
        stop.set()
        await asyncio.gather(*runners, return_exceptions=True)
        feed.stopped.set()
        await asyncio.to_thread(feed.close)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="default: the Nginx container's address")
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--tasks", type=int, default=1000, help="client i follows task i %% T")
    parser.add_argument("--rate", type=int, default=500, help="events/s over all the tasks")
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole storm")
    parser.add_argument("--back-timeout", type=float, default=300, help="seconds, per fault")
    args = parser.parse_args()
    url = args.url or container_url("nginx", 8080)
    RESULTS.mkdir(exist_ok=True)
    runs = []
    for number in range(args.runs):
        print(f"storm run {number + 1}/{args.runs}: {args.clients} clients via {url}", flush=True)
        tasks = min(args.tasks, args.clients)
        storms = run(url, args.clients, tasks, args.rate, args.faults, args.back_timeout)
        runs.append(asyncio.run(storms))
    (RESULTS / "storm.json").write_text(json.dumps(runs, indent=1))
    for fault in args.faults:
        rows = [s for r in runs for s in r["storms"] if s["fault"] == fault]
        for key in ("web_ready_s", "all_back_s", "all_back_after_ready_s"):
            print(f"{fault:8} {key:24} median {statistics.median(r[key] for r in rows)}")
        print(f"{fault:8} live lag p99 ms {[r['live_lag_ms']['p99'] for r in rows]}")
        print(f"{fault:8} docker checks failed {[r['docker_checks_failed'] for r in rows]}")


if __name__ == "__main__":
    main()

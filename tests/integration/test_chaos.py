"""Chaos: with three workers, ten running tasks watched by ten reconnecting clients,
one fault at a time. Every task must reach exactly one terminal event, every event
log must be gapless, no queued task may be lost, and the stack must be ready again
within 60 s. The table is printed at the end of the run and saved as JSON."""
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import (BASE_URL, CHAOS_ROWS, TERMINAL, Api, Watcher, compose, docker, gaps,
                      is_ready, wait_until)

TASKS = 10
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


class DroppableProxy:
    """A loopback TCP proxy to Nginx whose connections can all be cut at once,
    refusing new ones for a while: a client-side network drop."""

    def __init__(self, port):
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.links = set()
        self.refuse_until = 0.0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.links.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self.lock:
                self.links.difference_update((source, sink))

    def drop(self, seconds):
        self.refuse_until = time.monotonic() + seconds
        with self.lock:
            links = list(self.links)
        for s in links:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.listener.close()
        self.drop(0)


def kill_busiest_worker(api, tasks):
    workers = [api.snapshot(t["id"]).get("worker") for t in tasks]
    victim = max(set(workers) - {None}, key=workers.count)
    docker("kill", "--signal", "KILL", victim)
    return [t["id"] for t, w in zip(tasks, workers) if w == victim]


FAULTS = {
    "restart web": lambda ctx: compose("restart", "web", timeout=120),
    "restart nginx": lambda ctx: compose("restart", "nginx", timeout=120),
    "restart redis": lambda ctx: compose("restart", "redis", timeout=120),
    "kill -9 worker": lambda ctx: ctx.update(killed=kill_busiest_worker(ctx["api"], ctx["tasks"])),
    "workers 3 -> 1": lambda ctx: compose("up", "-d", "--scale", "worker=1", timeout=180),
    "client network drop": lambda ctx: ctx["proxy"].drop(3),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_task_ends_once_and_gapless_through(fault):
    port = int(BASE_URL.rsplit(":", 1)[1])
    proxy = DroppableProxy(port) if fault == "client network drop" else None
    api = Api()
    watchers = []
    try:
        tasks = [api.create(steps=30, step_ms=300) for _ in range(TASKS)]
        for task in tasks:
            watcher = Watcher(api, url=proxy.url if proxy else BASE_URL).connect()
            watcher.follow(task["id"])
            watchers.append(watcher)
        wait_until(lambda: all(w.last_seq(t["id"]) >= 3 for w, t in zip(watchers, tasks)), 60,
                   what="every task under way")
        ctx = {"api": api, "tasks": tasks, "proxy": proxy}
        before = {t["id"]: w.last_seq(t["id"]) for w, t in zip(watchers, tasks)}
        started = time.monotonic()
        FAULTS[fault](ctx)
        # Ready again: /readyz answers 200 and every task has moved on since the fault.
        wait_until(lambda: is_ready() and all(
            w.last_seq(t["id"]) > before[t["id"]] for w, t in zip(watchers, tasks)),
            60, interval=0.2, what="the stack to recover")
        recovery = time.monotonic() - started
        for watcher, task in zip(watchers, tasks):
            watcher.wait_terminal([task["id"]], timeout=120)

        histories = {t["id"]: w.history(t["id"]) for w, t in zip(watchers, tasks)}
        terminal = sum(1 for h in histories.values()
                       if [e["state"] in TERMINAL for e in h].count(True) == 1)
        row = {"fault": fault, "tasks": TASKS, "terminal": terminal,
               "gaps": sum(gaps(h) for h in histories.values()),
               "dups dropped": sum(w.duplicates for w in watchers),
               "recovery s": round(recovery, 1)}
        CHAOS_ROWS.append(row)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "chaos.json").write_text(json.dumps(CHAOS_ROWS, indent=1))

        assert terminal == TASKS and row["gaps"] == 0, row
        for task_id, history in histories.items():
            assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
            assert history[-1]["state"] == "succeeded", (fault, history[-1])
            if task_id in ctx.get("killed", ()):
                assert "retrying" in [e["state"] for e in history]
        assert recovery <= 60, row
    finally:
        for watcher in watchers:
            watcher.close()
        api.http.close()
        if proxy:
            proxy.close()
        if fault in ("kill -9 worker", "workers 3 -> 1"):
            compose("up", "-d", "--wait", "--scale", "worker=3", timeout=180)

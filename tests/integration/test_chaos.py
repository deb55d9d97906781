"""Chaos: with three workers, ten running tasks watched by ten reconnecting clients,
one fault at a time. Every task must reach exactly one terminal event, every event
log must be gapless, no queued task may be lost, and the stack must be ready again
within 60 s. The table is printed at the end of the run and saved as JSON."""

import csv
import gzip
import json
import socket
import threading
import time
import zlib

import pytest
from conftest import (
    ARTIFACTS,
    BASE_URL,
    CHAOS_ROWS,
    TERMINAL,
    Api,
    assert_gapless_single_terminal,
    compose,
    container_health,
    docker,
    gaps,
    is_ready,
    record_chaos_row,
    start_watched_tasks,
    stored_history,
    wait_until,
    worker_container,
)

TASKS = 10


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


def worker_starts():
    """Each running worker container's id and start time: a restart changes it."""
    ids = compose("ps", "-q", "worker").split()
    return set(docker("inspect", "-f", "{{.Id}} {{.State.StartedAt}}", *ids).split("\n")) - {""}


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
        tasks = start_watched_tasks(api, watchers, TASKS, proxy.url if proxy else BASE_URL)
        ctx = {"api": api, "tasks": tasks, "proxy": proxy}
        before = {t["id"]: w.last_seq(t["id"]) for w, t in zip(watchers, tasks)}
        workers_before, fault_at = worker_starts(), time.time()
        started = time.monotonic()
        FAULTS[fault](ctx)

        def moved_on(watcher, task):
            if task["id"] in ctx.get("killed", ()):  # a new run took it over (not the
                # events the victim sent while `docker kill` ran)
                return "retrying" in [e["state"] for e in watcher.history(task["id"])]
            return watcher.last_seq(task["id"]) > before[task["id"]]

        # Ready again: /readyz answers 200 and every task has moved on since the fault.
        wait_until(
            lambda: is_ready() and all(moved_on(w, t) for w, t in zip(watchers, tasks)),
            60,
            interval=0.2,
            what="the stack to recover",
        )
        recovery = time.monotonic() - started
        for watcher, task in zip(watchers, tasks):
            watcher.wait_terminal([task["id"]], timeout=120)
        if fault == "restart web":
            # The old worker closed its clients' connections and exited by itself, not
            # killed after gunicorn's whole graceful_timeout of refusing new requests.
            logs = compose("logs", "--since", str(int(fault_at)), "web")
            assert "Worker exiting" in logs
        if fault == "restart redis":
            # Workers reconnect; none exits (taskbeam/broker_transport.py). One that
            # does waits for its running tasks first, so its log says it before Docker
            # restarts it.
            logs = compose("logs", "--since", str(int(fault_at)), "worker")
            assert "Unrecoverable error" not in logs
            assert worker_starts() == workers_before

        row, histories = record_chaos_row(fault, watchers, tasks, recovery)
        assert row["terminal"] == TASKS and row["gaps"] == 0, row
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


# --- A frozen worker (issue 15): `docker pause` freezes every process of the container
# (the cgroup freezer; `docker kill -s STOP` would stop only Celery's main process), so
# the run misses its lease renewals (LEASE_S = 10 in taskbeam/worker.py), another
# worker's reaper hands the task over, and the old run resumes where it was when thawed.
# It must then write nothing: no event, no byte of the export.
LEASE_S = 10


def freeze_run(api, watcher, task_id, pause_when, min_freeze_s, lead_by):
    """Pause the worker running ``task_id`` once ``pause_when(snapshot)`` holds; thaw it
    after ``min_freeze_s`` and once the run that took over is ``lead_by`` progress points
    ahead of the frozen one, so that a run that is not fenced would visibly write behind.
    Returns the container, the seconds from the pause to the handover and the frozen
    run's last stored progress."""
    snapshot = wait_until(
        lambda: (
            (s := api.snapshot(task_id))["state"] == "running"
            and s.get("worker")
            and pause_when(s)
            and s
        ),
        60,
        interval=0.05,
        what="the task to run",
    )
    container = worker_container(snapshot["worker"])
    docker("pause", container)
    paused = time.monotonic()
    try:
        frozen_at = max(e["progress"] for e in stored_history(api, task_id))

        def handed_over():
            return next(
                (i for i, e in enumerate(watcher.history(task_id)) if e["state"] == "retrying"),
                None,
            )

        wait_until(
            lambda: handed_over() is not None,
            LEASE_S * 4,
            interval=0.05,
            what="the handover (retrying)",
        )
        handover_s = time.monotonic() - paused
        retry_index = handed_over()

        # A run paused late (a slow `docker pause`) leaves less than ``lead_by`` to go:
        # then half of what is left is ahead enough to see a stale writer behind.
        target = frozen_at + min(lead_by, max(1, (100 - frozen_at) // 2))

        def new_run_ahead():
            after = watcher.history(task_id)[retry_index:]
            return time.monotonic() - paused >= min_freeze_s and any(
                e["progress"] >= target for e in after
            )

        try:
            wait_until(new_run_ahead, min_freeze_s + 60, interval=0.05, what="")
        except AssertionError:
            after = [(e["state"], e["progress"]) for e in watcher.history(task_id)[retry_index:]]
            raise AssertionError(
                f"the new run never reached {target} % (frozen at {frozen_at} %) in "
                f"{min_freeze_s + 60} s; its events: {after[-20:]}"
            ) from None
    finally:
        docker("unpause", container)
    return container, handover_s, frozen_at


def check_fenced_history(api, watcher, task_id, fault, handover_s):
    """Both the live and the stored history: one handover, then a single run's events."""
    live = watcher.history(task_id)
    stored = stored_history(api, task_id)
    CHAOS_ROWS.append(
        {
            "fault": fault,
            "tasks": 1,
            "terminal": int([e["state"] in TERMINAL for e in stored].count(True) == 1),
            "gaps": gaps(stored),
            "dups dropped": watcher.duplicates,
            "recovery s": round(handover_s, 1),
        }
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "chaos.json").write_text(json.dumps(CHAOS_ROWS, indent=1))

    states = [e["state"] for e in stored]
    assert states.count("retrying") == 1, f"expected one handover, got states {states}"
    after = stored[states.index("retrying") :]
    shown = [(e["seq"], e["state"], e["progress"], e["message"]) for e in after]
    backwards = [(a, b) for a, b in zip(shown, shown[1:]) if b[2] < a[2]]
    assert not backwards, (
        f"progress went backwards {len(backwards)} times after the handover "
        f"(two runs writing), first: {backwards[:3]}; events from the "
        f"handover: {shown[:30]}"
    )
    messages = [e["message"] for e in after if e["state"] == "running"]
    repeated = sorted({m for m in messages if messages.count(m) > 1})
    assert not repeated, (
        f"{len(repeated)} progress reports appear twice after the handover "
        f"(two runs writing): {repeated[:5]}"
    )
    assert_gapless_single_terminal(stored)
    assert [(e["seq"], e["state"], e["progress"]) for e in live] == [
        (e["seq"], e["state"], e["progress"]) for e in stored
    ], "live and stored histories differ"


def wait_run_ended(container, task_id):
    """Wait until the thawed worker no longer executes ``task_id`` (Celery's inspect)."""

    def running_there():
        return task_id in docker(
            "exec",
            container,
            "sh",
            "-c",
            "celery -A taskbeam.worker inspect active --json -t 5 -d worker@$(hostname)",
            timeout=30,
        )

    wait_until(
        lambda: not running_there(), 60, interval=0.5, what="the thawed run to end on its worker"
    )


def wait_healthy(container):
    # Unpaused after a long pause, a worker reports unhealthy until a health check passes.
    wait_until(
        lambda: container_health(container) == "healthy",
        90,
        interval=0.5,
        what="the thawed worker to be healthy again",
    )


def test_freeze_worker_mid_simulate_then_thawed_run_writes_nothing(api, watcher):
    # 40 × 0.5 s: the handover comes 8-12 s into the freeze, and the new run is still
    # going when the old one thaws. The freeze (2 × the lease) leaves the old run a few
    # seconds inside its soft time limit (TASK_TIME_LIMIT_S=30 in tests/run.sh minus 5 s)
    # after thawing, so that a run that is not fenced visibly goes on writing.
    task = api.create(steps=40, step_ms=500)
    watcher.follow(task["id"])
    container, handover_s, _ = freeze_run(
        api,
        watcher,
        task["id"],
        pause_when=lambda s: s["progress"] >= 10,
        min_freeze_s=2 * LEASE_S,
        lead_by=10,
    )
    try:
        watcher.wait_terminal([task["id"]], timeout=60)
        wait_run_ended(container, task["id"])  # whatever the frozen run wrote is stored now
    finally:
        wait_healthy(container)
    check_fenced_history(api, watcher, task["id"], "freeze simulate", handover_s)
    assert api.snapshot(task["id"])["state"] == "succeeded"


def test_freeze_worker_mid_export_then_file_is_whole(api, watcher, tmp_path):
    # The whole demo table as gzipped CSV (several seconds, which leaves room to pause it
    # mid-file). Gzip also makes a stale writer visible: the CSV is deterministic, so a
    # stale run rewriting plain CSV at the same offsets would leave identical bytes, but
    # a gzip stream closed early leaves its final block and trailer inside the file.
    # Paused as soon as it runs; thawed once the new run is half a file ahead, so that
    # an old run that is not fenced writes behind it, and is still mid-file when it ends.
    task = api.create("export", format="csv.gz")
    watcher.follow(task["id"])
    container, handover_s, _ = freeze_run(
        api, watcher, task["id"], pause_when=lambda s: True, min_freeze_s=LEASE_S, lead_by=50
    )
    path = tmp_path / "export.csv.gz"
    try:
        watcher.wait_terminal([task["id"]], timeout=60)
        wait_run_ended(container, task["id"])
        snapshot = api.snapshot(task["id"])
        if snapshot["state"] == "succeeded":
            # Without delay: the test stack's exports expire after EXPORT_TTL=20 s.
            with api.request(
                "GET", f"/api/tasks/{task['id']}/download", stream=True, timeout=60
            ) as response:
                assert response.status_code == 200, response.text
                with open(path, "wb") as out:
                    for chunk in response.iter_content(1 << 20):
                        out.write(chunk)
    finally:
        wait_healthy(container)
    # The history's verdict and the file's, in one failure.
    problems = []
    try:
        check_fenced_history(api, watcher, task["id"], "freeze export", handover_s)
    except AssertionError as exc:
        problems.append(str(exc).split("\nassert ")[0])
    if snapshot["state"] == "succeeded":
        problems.append(file_problem(path, snapshot["result"]))
    else:
        problems.append(f"the export ended {snapshot['state']}: {snapshot.get('error')}")
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


def file_problem(path, result):
    """What is wrong with a downloaded gzipped CSV export given its ``result``, or None."""
    size = path.stat().st_size
    if size != result["bytes"]:
        return f"the file has {size} bytes, its result says {result['bytes']}"
    rows = widths_ok = 0
    try:
        with gzip.open(path, "rt", newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            for row in reader:
                rows += 1
                widths_ok += len(row) == len(header)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as exc:
        return f"the file is corrupt after {rows} rows: {exc!r}"
    if rows != result["rows"] or widths_ok != rows:
        return (
            f"the file has {rows} data rows ({widths_ok} of the header's width "
            f"{len(header)}), its result says {result['rows']}"
        )
    return None

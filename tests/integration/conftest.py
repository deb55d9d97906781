"""Fixtures for tests against the running stack, reached only through Nginx.

`tests/run.sh` starts a Compose project of its own and sets TASKBEAM_URL,
COMPOSE_PROJECT_NAME and COMPOSE_ENV_FILES, so `docker compose` here talks to
that project and never to a stack the user has running.
"""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio

BASE_URL = os.environ.get("TASKBEAM_URL", "http://127.0.0.1:18080")
TERMINAL = {"succeeded", "failed", "cancelled"}


def compose(*args, check=True, timeout=120):
    """Run `docker compose ARGS` for the test project; returns stdout."""
    done = subprocess.run(
        ["docker", "compose", *args], capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker compose {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def json_lines(service, since):
    """The JSON objects among a service's log lines since ``since`` (epoch seconds)."""
    found = []
    for line in compose("logs", "--no-color", "--no-log-prefix", "--since", since, service).split(
        "\n"
    ):
        if "{" not in line:
            continue
        try:  # from the first brace: `compose logs` may put terminal codes before it
            found.append(json.loads(line[line.index("{") :]))
        except ValueError:
            pass
    return found


def docker(*args, timeout=60):
    """Run `docker ARGS`; returns stdout."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=timeout
    ).stdout


def wait_until(predicate, timeout, interval=0.1, what="condition"):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def is_ready():
    try:
        return requests.get(f"{BASE_URL}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_ready(timeout=90):
    wait_until(is_ready, timeout, interval=0.5, what="/readyz to answer 200")


# Nginx's 429 (nginx/nginx.conf), not the app's.
NGINX_RATE_LIMITED = "Too many requests or connections from this address"


class Api:
    """One browser-like session: a cookie jar, JSON helpers, the same Origin as the page."""

    def __init__(self):
        self.http = requests.Session()
        self.http.get(f"{BASE_URL}/api/tasks", timeout=10)  # sets the session cookie

    def request(self, method, path, **kwargs):
        kwargs.setdefault("timeout", 10)
        return self.http.request(method, f"{BASE_URL}{path}", **kwargs)

    def post_task(self, body, deadline_s=90):
        """POST /api/tasks as a client would: past Nginx's per-address limit (the whole
        suite comes from one address, and an earlier test may have spent its burst)
        it waits out Retry-After and asks again; the app's own answers come back."""
        give_up_at = time.monotonic() + deadline_s
        while True:
            response = self.request("POST", "/api/tasks", json=body)
            from_nginx = response.status_code == 429 and NGINX_RATE_LIMITED in response.text
            if not from_nginx or time.monotonic() > give_up_at:
                return response
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 5))

    def create(self, kind="simulate", **params):
        response = self.post_task({"kind": kind, "params": params})
        assert response.status_code == 202, response.text
        return response.json()

    def snapshot(self, task_id):
        response = self.request("GET", f"/api/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def cookie_header(self):
        return "; ".join(f"{c.name}={c.value}" for c in self.http.cookies)


class Watcher:
    """A real Socket.IO client (WebSocket transport) that records task events per task.

    ``follow`` subscribes and keeps every event from the ack's ``missed`` and
    from live ``task_update`` messages, dropping duplicates by seq as the contract
    tells clients to; on reconnect, and when a live event skips a seq, it resubscribes
    after the last seq up to which it has every event.
    """

    def __init__(self, api, reconnect=True, url=BASE_URL):
        self.api = api
        self.url = url
        self.events = {}  # task_id -> {seq: event}
        self.duplicates = 0
        self.live_seen = set()  # (connection number, task_id, seq) of live events
        self.live_duplicates = 0  # the same event twice on one connection: never allowed
        self.gaps_refetched = 0  # live events that showed a gap, answered by a resubscribe
        self.resubscribe_failures = []  # what a failed resubscribe got, for a test's message
        self.lock = threading.Condition()
        self.sio = socketio.Client(
            reconnection=reconnect, reconnection_delay=0.2, reconnection_delay_max=1
        )
        self.sio.on("task_update", self._on_event)
        self.sio.on("connect", self._on_connect)
        self.connects = 0
        self.websockets = []

    def connect(self):
        self.sio.connect(
            self.url,
            transports=["websocket"],
            wait_timeout=10,
            headers={"Cookie": self.api.cookie_header()},
        )
        return self

    def close(self):
        self.sio.disconnect()
        # After a drop by the server the client leaves its WebSocket for the GC to close.
        for ws in self.websockets:
            ws.shutdown()

    def _on_connect(self):
        with self.lock:
            self.websockets.append(self.sio.eio.ws)
            self.connects += 1
            followed = list(self.events)
        if self.connects > 1:
            for task_id in followed:
                threading.Thread(target=self._resubscribe, args=(task_id,), daemon=True).start()

    def _resubscribe(self, task_id):
        # As the page does, an "unavailable" ack (the store out of reach for a moment,
        # as in a failover) is tried again a second later. No ack within the call's
        # timeout (a store call waiting out a failover) is asked again while connected:
        # the page waits for its ack however late it comes.
        for _ in range(60):
            try:
                ack = self.subscribe(task_id, self.last_gapless_seq(task_id))
            except Exception as exc:
                self.resubscribe_failures.append(f"{task_id}: {exc!r}")
                if not self.sio.connected:
                    return  # the next connect resubscribes
                time.sleep(1)
                continue
            if ack.get("ok"):
                return
            self.resubscribe_failures.append(f"{task_id}: {ack.get('error')}")
            if ack.get("error", {}).get("code") != "unavailable":
                return
            time.sleep(1)

    def _keep(self, event):
        with self.lock:
            seen = self.events.setdefault(event["task_id"], {})
            if event["seq"] in seen:
                self.duplicates += 1
            else:
                seen[event["seq"]] = event
            self.lock.notify_all()

    def _on_event(self, event):
        with self.lock:
            seen = self.events.get(event["task_id"], {})
            last = max(seen or {0: None})
            live = (self.connects, event["task_id"], event["seq"])
            self.live_duplicates += live in self.live_seen
            self.live_seen.add(live)
        self._keep(event)
        if seen and event["seq"] > last + 1:
            # A gap, answered as the contract tells clients to: subscribe again with the
            # last seq seen (a run killed between its append and its publish leaves an
            # event that only the stored log has). Not from this thread: the ack arrives
            # on it.
            self.gaps_refetched += 1
            threading.Thread(
                target=self._resubscribe, args=(event["task_id"],), daemon=True
            ).start()

    def subscribe(self, task_id, after=0):
        with self.lock:
            self.events.setdefault(task_id, {})
        for _ in range(100):  # pages of stored events, as the page asks for them
            ack = self.sio.call("subscribe", {"task_id": task_id, "after": after}, timeout=10)
            if not ack.get("ok"):
                return ack
            for event in ack["missed"]:
                self._keep(event)
            if not ack.get("more"):
                return ack
            after = ack["next_after"]
        raise AssertionError(f"more than 100 pages of events for {task_id}")

    def follow(self, task_id):
        ack = self.subscribe(task_id)
        assert ack["ok"], ack
        return ack

    def last_seq(self, task_id):
        with self.lock:
            return max(self.events.get(task_id) or {0: None})

    def last_gapless_seq(self, task_id):
        """The highest seq with every seq below it kept (what to resubscribe after)."""
        with self.lock:
            seen, seq = self.events.get(task_id, {}), 0
            while seq + 1 in seen:
                seq += 1
            return seq

    def history(self, task_id):
        with self.lock:
            seen = self.events.get(task_id, {})
            return [seen[s] for s in sorted(seen)]

    def wait_terminal(self, task_ids, timeout=60):
        def finished():
            return all(any(e["state"] in TERMINAL for e in self.history(t)) for t in task_ids)

        wait_until(finished, timeout, what=f"terminal events of {len(task_ids)} tasks")
        # A gap just before the terminal event is being fetched: give that a moment
        # (what is still missing after it shows as a gap in the history).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            self.last_gapless_seq(t) < self.last_seq(t) for t in task_ids
        ):
            time.sleep(0.05)


def gaps(history):
    """How many seqs are missing between 1 and the last seq seen."""
    seqs = {e["seq"] for e in history}
    return (max(seqs) - len(seqs)) if seqs else 0


def assert_gapless_single_terminal(history, state="succeeded"):
    """The contract's delivery guarantee, for one task's recorded events."""
    seqs = [e["seq"] for e in history]
    assert seqs == list(range(1, len(seqs) + 1)), f"gap or disorder in seqs {seqs}"
    terminal = [e for e in history if e["state"] in TERMINAL]
    assert len(terminal) == 1, f"expected one terminal event, got {terminal}"
    assert history[-1]["state"] == state, history[-1]
    if state == "succeeded":
        assert history[-1]["progress"] == 100


@pytest.fixture
def api():
    """A fresh session (task owner) talking to the stack through Nginx."""
    session = Api()
    yield session
    session.http.close()


@pytest.fixture
def watcher(api):
    """A connected Socket.IO client bound to ``api``'s session."""
    w = Watcher(api).connect()
    yield w
    w.close()


CHAOS_ROWS = []  # rows of test_chaos.py, test_ha.py and test_swarm.py, printed at the end
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def start_watched_tasks(api, watchers, count=10, url=BASE_URL):
    """``count`` running tasks of 9 s, each followed by a reconnecting client of its
    own (appended to ``watchers``, for the caller to close); returns the tasks once
    every one is under way."""
    tasks = [api.create(steps=30, step_ms=300) for _ in range(count)]
    for task in tasks:
        watcher = Watcher(api, url=url).connect()
        watcher.follow(task["id"])
        watchers.append(watcher)
    wait_until(
        lambda: all(w.last_seq(t["id"]) >= 3 for w, t in zip(watchers, tasks)),
        60,
        what="every task under way",
    )
    return tasks


def record_chaos_row(fault, watchers, tasks, recovery_s, artifact="chaos.json", **more):
    """A row of the chaos table from each task's watched history (``watchers[i]``
    follows ``tasks[i]``), kept in CHAOS_ROWS and saved under tests/artifacts.
    ``recovery_s`` None prints as "-"; ``more``: further columns (``failover_s``).

    :returns: the row and the histories by task id.
    """
    histories = {t["id"]: w.history(t["id"]) for w, t in zip(watchers, tasks)}
    once = [h for h in histories.values() if [e["state"] in TERMINAL for e in h].count(True) == 1]
    row = {
        "fault": fault,
        "tasks": len(tasks),
        "terminal": len(once),
        "gaps": sum(gaps(h) for h in histories.values()),
        # Live events that skipped a seq; the resubscribe found the rest stored.
        "gaps filled": sum(w.gaps_refetched for w in watchers),
        "dups dropped": sum(w.duplicates for w in watchers),
        "recovery s": "-" if recovery_s is None else round(recovery_s, 1),
    }
    row.update({name.replace("_", " "): value for name, value in more.items()})
    CHAOS_ROWS.append(row)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / artifact).write_text(json.dumps(CHAOS_ROWS, indent=1))
    return row, histories


def pytest_terminal_summary(terminalreporter):
    if not CHAOS_ROWS:
        return
    header = ("fault", "tasks", "terminal", "gaps", "gaps filled", "dups dropped", "recovery s")
    header += ("failover s",)
    terminalreporter.section("chaos")
    terminalreporter.write_line(f"{header[0]:<20}" + "".join(f"{h:>14}" for h in header[1:]))
    for row in CHAOS_ROWS:
        terminalreporter.write_line(
            f"{row['fault']:<20}" + "".join(f"{row.get(h, '-')!s:>14}" for h in header[1:])
        )


def stored_history(api, task_id, max_pages=100):
    """Every stored event of a task from GET /events, following pages if the reply has them."""
    events, after = [], 0
    for _ in range(max_pages):
        reply = api.request("GET", f"/api/tasks/{task_id}/events?after={after}").json()
        events += reply["events"]
        if not reply.get("has_more"):
            return events
        after = reply["next_after"]
    raise AssertionError(f"more than {max_pages} pages of events for {task_id}")


def worker_container(hostname):
    """The id of the test project's worker container whose hostname is ``hostname``.

    A snapshot's ``worker`` is the container's hostname, which Docker sets to its short
    id; looking it up among this project's workers only keeps other stacks out of reach.
    """
    project = os.environ.get("COMPOSE_PROJECT_NAME", "taskbeam-test")
    ids = docker(
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        "label=com.docker.compose.service=worker",
    ).split()
    found = [
        c for c in ids if docker("inspect", "-f", "{{.Config.Hostname}}", c).strip() == hostname
    ]
    assert len(found) == 1, f"no single worker of {project} has hostname {hostname!r}"
    return found[0]


def container_health(container):
    return docker("inspect", "-f", "{{.State.Health.Status}}", container).strip()


def project_env():
    """The test stack's env file (written by tests/run.sh) as a dict."""
    path = os.environ["COMPOSE_ENV_FILES"].split(",")[0]
    with open(path) as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line and line[0] != "#")


def in_network_command(script, *args, interactive=False):
    """`docker run` argv for a Python ``script`` in a throwaway app container on the
    test project's front network: a client with an address of its own (the host's
    requests all reach Nginx from one address). It reaches Nginx at http://nginx:8080."""
    tag = project_env().get("IMAGE_TAG") or "latest"
    network = f"{os.environ.get('COMPOSE_PROJECT_NAME', 'taskbeam-test')}_front"
    return [
        "docker",
        "run",
        "--rm",
        *(["-i"] if interactive else []),
        "--network",
        network,
        "--entrypoint",
        "python",
        f"taskbeam-app:{tag}",
        "-c",
        script,
        *map(str, args),
    ]


def inject_events(task_id, first, last):
    """Append synthetic `running` events ``first..last`` to a task's stored history
    (straight into its Redis stream), for tests that need a long history quickly."""
    namespace = project_env().get("TASKBEAM_NAMESPACE") or "taskbeam"
    script = """
    for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
      local e = string.format(
        '{"task_id":"%s","seq":%d,"state":"running","progress":%.1f,"message":"Step %d","ts":1.5}',
        ARGV[3], i, (i % 1000) / 10, i)
      redis.call('XADD', KEYS[1], i .. '-0', 'e', e)
    end
    return redis.call('XLEN', KEYS[1])"""
    compose(
        "exec",
        "-T",
        "redis",
        "redis-cli",
        "EVAL",
        script,
        "1",
        f"{namespace}:task:{task_id}:events",
        str(first),
        str(last),
        task_id,
    )


@pytest.fixture(scope="module")
def owner():
    """One session and its watcher, shared by a module's tests."""
    api = Api()
    watcher = Watcher(api).connect()
    yield api, watcher
    watcher.close()
    api.http.close()

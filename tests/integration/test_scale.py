"""Scale out: several web replicas behind Nginx, a worker from another Compose
project that shares only the Redis URL, Flower, and per-process metrics."""

import os
import subprocess
import threading

import pytest
import requests
from conftest import (
    BASE_URL,
    Api,
    Watcher,
    assert_gapless_single_terminal,
    compose,
    wait_ready,
    wait_until,
)
from test_security import env_file

REMOTE_REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "16379"))


def web_metrics():
    """`/metrics` of every web replica, read from inside each container."""
    script = (
        "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:8000/metrics', timeout=5).read().decode())"
    )
    replicas = compose("ps", "-q", "web").split()
    out = []
    for index in range(1, len(replicas) + 1):
        text = compose("exec", "-T", "--index", str(index), "web", "python", "-c", script)
        out.append(
            {
                line.split()[0]: float(line.split()[1])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }
        )
    return out


@pytest.fixture
def two_web_replicas():
    compose("up", "-d", "--wait", "--scale", "web=2", "--scale", "worker=3", timeout=180)
    yield
    compose("up", "-d", "--wait", "--scale", "web=1", "--scale", "worker=3", timeout=180)
    wait_ready()


def test_forty_clients_over_two_web_replicas_and_one_replica_removed(two_web_replicas):
    """Each replica reads the events of its own clients' tasks only (room channels);
    clients that move to the other replica lose nothing and get nothing twice."""
    sessions = [Api() for _ in range(4)]
    watchers, tasks = [], []
    # Sockets of earlier tests may still be timing out on the first replica.
    before = web_metrics()
    subscriptions_before = sum(m["taskbeam_subscriptions"] for m in before)
    try:
        for i in range(40):
            api = sessions[i % 4]
            watcher = Watcher(api).connect()
            task = api.create(steps=40, step_ms=400)
            watcher.follow(task["id"])
            watchers.append(watcher)
            tasks.append(task)
        # Nginx spread the connections: both replicas hold clients and subscriptions.
        per_replica = web_metrics()
        assert len(per_replica) == 2
        assert all(m["taskbeam_connected_clients"] > 0 for m in per_replica), per_replica
        assert sum(m["taskbeam_subscriptions"] for m in per_replica) - subscriptions_before == 40
        wait_until(
            lambda: all(w.last_seq(t["id"]) >= 3 for w, t in zip(watchers, tasks)),
            60,
            what="every task under way",
        )
        # An event reaches the replica that holds its task's room, not every replica
        # (the stock listener, WEB_FAST_TRANSPORT=0, reads every event).
        during = web_metrics()
        received, delivered = (
            sum(m[name] for m in during) - sum(m[name] for m in before)
            for name in ("taskbeam_events_received_total", "taskbeam_events_delivered_total")
        )
        if all(m["taskbeam_fast_transport"] for m in during):
            assert delivered > 40 and received < 1.2 * delivered, (received, delivered)
            assert all(0 < m["taskbeam_mq_room_channels"] < 40 for m in during), during
        compose("up", "-d", "--wait", "--scale", "web=1", "--scale", "worker=3", timeout=180)
        for watcher, task in zip(watchers, tasks):
            watcher.wait_terminal([task["id"]], timeout=120)
            assert_gapless_single_terminal(watcher.history(task["id"]))
        assert sum(w.connects > 1 for w in watchers) > 0, "nobody had to move"
        # None lost: each history above is gapless (live events, and the stored ones a
        # resubscribe returns: a live event may come before the ack that fills the hole
        # before it). None twice on a connection:
        assert sum(w.live_duplicates for w in watchers) == 0
        workers = {
            api.snapshot(t["id"])["worker"]
            for api, t in zip([sessions[i % 4] for i in range(40)], tasks)
        }
        assert len(workers) >= 2
    finally:
        for i, task in enumerate(tasks):  # no backlog left for the next test on failure
            sessions[i % 4].request("POST", f"/api/tasks/{task['id']}/cancel", json={})
        for w in watchers:
            w.close()
        for s in sessions:
            s.http.close()


def test_metrics_give_autoscalers_queue_backlog_running_tasks_and_live_workers():
    """What a KEDA or HPA rule scales on, as every web process reports it: 3 workers of
    4 slots each run 12 tasks; the rest wait, in the broker's list and in the store."""
    api = Api()
    tasks = []
    try:
        tasks = [api.create(steps=100, step_ms=300) for _ in range(20)]
        slots = 3 * 4  # WORKER_REPLICAS x WORKER_CONCURRENCY in the test stack

        def saturated():
            (m,) = web_metrics()
            return m["taskbeam_tasks_running"] == slots and m["taskbeam_tasks_queued"] >= 8

        wait_until(saturated, 90, interval=0.5, what="every worker slot busy, a backlog")
        (m,) = web_metrics()
        assert m["taskbeam_workers_alive"] == 3
        assert m["taskbeam_queue_length"] >= 1  # reserved messages leave the list
        assert m["taskbeam_oldest_queued_age_seconds"] > 0
    finally:
        for task in tasks:
            api.request("POST", f"/api/tasks/{task['id']}/cancel", json={})
        api.http.close()
    wait_until(
        lambda: web_metrics()[0]["taskbeam_tasks_queued"] == 0, 60, what="the backlog cancelled"
    )


@pytest.fixture
def remote_worker():
    """Redis published on loopback, the stack's workers at 0, and a worker from a
    second Compose project (worker/compose.yml) that knows only REDIS_URL."""
    env = env_file()
    override = ["-f", "docker-compose.yml", "-f", "redis/expose.yml"]
    os.environ["REDIS_PORT"] = str(REMOTE_REDIS_PORT)
    remote_env = {
        **os.environ,
        "COMPOSE_ENV_FILES": os.environ["COMPOSE_ENV_FILES"],
        "REDIS_URL": f"redis://worker:{env['REDIS_WORKER_PASSWORD']}@127.0.0.1:{REMOTE_REDIS_PORT}/0",
        "WORKER_NETWORK_MODE": "host",
        "DEMO_DATA": "0",
    }
    remote = [
        "docker",
        "compose",
        "-p",
        f"{os.environ['COMPOSE_PROJECT_NAME']}-remote",
        "-f",
        "worker/compose.yml",
    ]
    try:
        compose(*override, "up", "-d", "--wait", "--scale", "worker=0", timeout=180)
        subprocess.run(
            [*remote, "up", "-d", "--wait"],
            env=remote_env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        wait_ready()  # Redis was recreated: the web listener resubscribes first
        yield subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run(
            [*remote, "down", "-v", "--timeout", "10"],
            env=remote_env,
            capture_output=True,
            timeout=120,
        )
        os.environ.pop("REDIS_PORT", None)
        # Without the override: Redis is recreated unpublished, as it was.
        compose("up", "-d", "--wait", "--scale", "worker=3", timeout=180)
        wait_ready()


def test_a_worker_from_another_compose_project_runs_tasks_sent_here(remote_worker, api, watcher):
    tasks = [api.create(steps=5, step_ms=100) for _ in range(3)]
    for task in tasks:
        watcher.follow(task["id"])
    watcher.wait_terminal([t["id"] for t in tasks], timeout=60)
    for task in tasks:
        assert_gapless_single_terminal(watcher.history(task["id"]))
        assert api.snapshot(task["id"])["worker"] == remote_worker


def test_flower_is_behind_basic_auth():
    env = env_file()
    compose("--profile", "monitoring", "up", "-d", "--wait", "flower", timeout=180)
    try:
        anonymous = requests.get(f"{BASE_URL}/flower/", timeout=10)
        assert anonymous.status_code == 401
        wrong = requests.get(f"{BASE_URL}/flower/", auth=("admin", "nope"), timeout=10)
        assert wrong.status_code == 401
        ok = requests.get(
            f"{BASE_URL}/flower/",
            timeout=10,
            auth=(env.get("FLOWER_USER", "admin"), env["FLOWER_PASSWORD"]),
        )
        assert ok.status_code == 200 and "Flower" in ok.text
    finally:
        compose("--profile", "monitoring", "stop", "flower", timeout=60)
        compose("--profile", "monitoring", "rm", "-f", "flower", timeout=60)


def test_polling_transport_works_with_one_web_replica(api):
    """The documented limit: long-polling needs every request of a session on one
    replica, so it is supported with one `web`; with more, clients use WebSocket."""
    import socketio

    client = socketio.Client(reconnection=False)
    client.connect(
        BASE_URL, transports=["polling"], wait_timeout=10, headers={"Cookie": api.cookie_header()}
    )
    try:
        task = api.create(steps=3, step_ms=100)
        events = []
        done = threading.Event()

        def on_update(event):
            events.append(event)
            if event["state"] == "succeeded":
                done.set()

        client.on("task_update", on_update)
        ack = client.call("subscribe", {"task_id": task["id"], "after": 0}, timeout=10)
        assert ack["ok"]
        events.extend(ack["missed"])
        if any(e["state"] == "succeeded" for e in events):
            done.set()
        assert done.wait(30)
        seen = {e["seq"]: e for e in events}
        assert_gapless_single_terminal([seen[s] for s in sorted(seen)])
    finally:
        client.disconnect()

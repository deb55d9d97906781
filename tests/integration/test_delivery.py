"""The delivery guarantee: replay by seq, isolation, and faults mid-task."""

import os
import signal
import subprocess
import threading

import requests
from conftest import (
    BASE_URL,
    Api,
    Watcher,
    assert_gapless_single_terminal,
    compose,
    docker,
    wait_ready,
    wait_until,
)


def test_late_subscriber_gets_the_whole_history_or_the_tail(api, watcher):
    task = api.create(steps=5, step_ms=20)
    wait_until(lambda: api.snapshot(task["id"])["state"] == "succeeded", 30, what="success")
    ack = watcher.subscribe(task["id"], after=0)
    assert ack["ok"] and ack["task"]["state"] == "succeeded"
    assert_gapless_single_terminal(ack["missed"])
    assert ack["task"]["seq"] == ack["missed"][-1]["seq"]
    k = 3
    tail = watcher.subscribe(task["id"], after=k)["missed"]
    assert [e["seq"] for e in tail] == list(range(k + 1, ack["task"]["seq"] + 1))


def test_disconnect_mid_task_then_resubscribe_gives_a_gapless_union(api):
    task = api.create(steps=30, step_ms=100)
    first = Watcher(api, reconnect=False).connect()
    first.follow(task["id"])
    wait_until(lambda: first.last_seq(task["id"]) >= 4, 30, what="a few events")
    first.close()
    seen = first.history(task["id"])
    second = Watcher(api).connect()
    try:
        wait_until(
            lambda: api.snapshot(task["id"])["seq"] > seen[-1]["seq"] + 2,
            30,
            what="events while disconnected",
        )
        for event in seen:
            second._keep(event)
        second.subscribe(task["id"], after=seen[-1]["seq"])
        second.wait_terminal([task["id"]])
        assert_gapless_single_terminal(second.history(task["id"]))
    finally:
        second.close()


def test_thirty_concurrent_sessions_see_only_their_own_tasks():
    sessions = [Api() for _ in range(30)]
    watchers = [Watcher(s).connect() for s in sessions]
    try:
        tasks = [s.create(steps=5, step_ms=100) for s in sessions]
        errors = []

        def follow(w, own, foreign):
            try:
                w.follow(own["id"])
                assert w.subscribe(foreign["id"])["error"]["code"] == "not_found"
                w.wait_terminal([own["id"]], timeout=90)
            except Exception as exc:  # reported below, with the session's index
                errors.append(exc)

        threads = [
            threading.Thread(target=follow, args=(w, t, tasks[(i + 1) % 30]))
            for i, (w, t) in enumerate(zip(watchers, tasks))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for w, task in zip(watchers, tasks):
            assert set(w.events) <= {task["id"], tasks[(tasks.index(task) + 1) % 30]["id"]}
            assert all(not seen for tid, seen in w.events.items() if tid != task["id"]), (
                "a session received another session's events"
            )
            assert_gapless_single_terminal(w.history(task["id"]))
    finally:
        for w in watchers:
            w.close()
        for s in sessions:
            s.http.close()


def test_redis_restart_mid_task_loses_no_event_and_readyz_reports_it(api, watcher):
    tasks = [api.create(steps=30, step_ms=400) for _ in range(3)]
    for task in tasks:
        watcher.follow(task["id"])
    wait_until(
        lambda: all(watcher.last_seq(t["id"]) >= 3 for t in tasks), 30, what="tasks under way"
    )
    compose("stop", "redis", timeout=60)
    try:
        wait_until(
            lambda: readyz_status() == 503,
            20,
            interval=0.5,
            what="/readyz to turn 503 while Redis is down",
        )
    finally:
        compose("start", "redis", timeout=60)
    wait_ready()
    watcher.wait_terminal([t["id"] for t in tasks], timeout=120)
    for task in tasks:
        # Events persisted before the stop came back from the AOF; none is missing.
        assert_gapless_single_terminal(watcher.history(task["id"]))
        stored = api.request("GET", f"/api/tasks/{task['id']}/events?after=0").json()["events"]
        assert [e["seq"] for e in stored] == [e["seq"] for e in watcher.history(task["id"])]


def readyz_status():
    try:
        return requests.get(f"{BASE_URL}/readyz", timeout=3).status_code
    except requests.RequestException:
        return None


def test_a_task_whose_workers_keep_dying_ends_failed_past_the_redelivery_cap(api, watcher):
    # The test stack allows one redelivery (TASK_MAX_REDELIVERIES=1): two deaths end it.
    task = api.create(steps=100, step_ms=300)
    watcher.follow(task["id"])
    killed = []
    try:
        for attempt in (1, 2):
            worker = wait_until(
                lambda: (w := api.snapshot(task["id"]).get("worker")) and w not in killed and w,
                60,
                what=f"run {attempt} to start on a live worker",
            )
            wait_until(lambda: api.snapshot(task["id"])["progress"] > 0, 30, what="progress")
            docker("kill", "--signal", "KILL", worker)
            killed.append(worker)
        watcher.wait_terminal([task["id"]], timeout=90)
        history = watcher.history(task["id"])
        assert_gapless_single_terminal(history, state="failed")
        assert history[-1]["error"]["code"] == "too_many_redeliveries"
        assert [e["state"] for e in history].count("retrying") == 1
    finally:
        compose("up", "-d", "--wait", "--scale", "worker=3", timeout=180)


def test_a_task_over_its_time_limit_ends_failed(api, watcher):
    # The test stack's TASK_TIME_LIMIT_S is 30: the soft limit stops the job at 25 s.
    task = api.create(steps=60, step_ms=1000)
    watcher.follow(task["id"])
    watcher.wait_terminal([task["id"]], timeout=60)
    history = watcher.history(task["id"])
    assert_gapless_single_terminal(history, state="failed")
    assert history[-1]["error"]["code"] == "time_limit"


def test_cancelling_a_queued_task_ends_it_at_once(api, watcher):
    # 3 workers x 4 slots: twelve long tasks fill them, the thirteenth waits in the queue.
    fillers = [api.create(steps=100, step_ms=200) for _ in range(12)]
    try:
        wait_until(
            lambda: all(api.snapshot(t["id"])["state"] == "running" for t in fillers),
            60,
            what="every worker slot busy",
        )
        queued = api.create(steps=1, step_ms=0)
        watcher.follow(queued["id"])
        assert api.snapshot(queued["id"])["state"] == "queued"
        response = api.request("POST", f"/api/tasks/{queued['id']}/cancel", json={})
        assert response.status_code == 202 and response.json()["state"] == "cancelled"
        watcher.wait_terminal([queued["id"]], timeout=10)
        history = watcher.history(queued["id"])
        assert [e["state"] for e in history] == ["queued", "cancelled"]
    finally:
        for t in fillers:
            api.request("POST", f"/api/tasks/{t['id']}/cancel", json={})
    # The revoked message never runs: once the slots free up, it stays as it was.
    wait_until(
        lambda: all(api.snapshot(t["id"])["state"] == "cancelled" for t in fillers),
        30,
        what="the fillers to stop",
    )
    assert [e["state"] for e in watcher.history(queued["id"])] == ["queued", "cancelled"]


def worker_healthy(container):
    return (
        subprocess.run(
            ["docker", "exec", container, "/app/worker/healthcheck.sh"],
            capture_output=True,
            timeout=30,
        ).returncode
        == 0
    )


def signal_main_process(container, sig):
    # From the host, by pid: `docker kill --signal` (any signal) marks the container as
    # stopped by hand, so `restart: unless-stopped` would never restart it afterwards;
    # and from inside, the kernel drops SIGSTOP sent to a namespace's pid 1.
    os.kill(int(docker("inspect", "-f", "{{.State.Pid}}", container)), sig)


def test_the_worker_healthcheck_reports_a_stuck_worker_and_its_recovery():
    # Celery's main process frozen: its consumer loop stops touching the alive file.
    # (A broker outage stops it too; a test of that would disconnect every client.)
    container = compose("ps", "-q", "worker").split()[0]
    wait_until(lambda: worker_healthy(container), 60, interval=1, what="a healthy worker")
    signal_main_process(container, signal.SIGSTOP)
    try:
        wait_until(
            lambda: not worker_healthy(container),
            30,
            interval=1,
            what="the healthcheck of a frozen worker to fail",
        )
    finally:
        signal_main_process(container, signal.SIGCONT)
    wait_until(
        lambda: worker_healthy(container), 60, interval=1, what="the healthcheck to pass again"
    )

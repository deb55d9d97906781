"""Runs against a real Redis: fencing tokens, leases, idempotent emits, the
active-task cap, the reaper and the sweeper (taskbeam/store.py, taskbeam/worker.py).

The worker module is imported with a placeholder REDIS_URL (nothing connects at
import); every test builds its own runtime on the throwaway Redis, with a
recording stand-in for Flask-SocketIO's emitter and Celery's ``send_task``.
"""

import json
import os

import pytest
from celery.exceptions import SoftTimeLimitExceeded

import redis as redis_lib
from taskbeam import broker, config, progress, protocol
from taskbeam.emitter import Emitter
from taskbeam.store import LeaseLost, TaskFinished, TaskStore, TooManyActive

os.environ.setdefault("REDIS_URL", "redis://placeholder:6379/0")
from taskbeam import jobs, worker  # noqa: E402  (needs REDIS_URL at import)


class Published:
    """Records what the emitter publishes (Flask-SocketIO's ``emit`` signature)."""

    def __init__(self):
        self.events = []

    def emit(self, event, data, to=None):
        self.events.append(data)


class Sent:
    """Records ``send_task`` calls; fails for the ids in ``failing``."""

    def __init__(self, failing=()):
        self.ids, self.failing = [], set(failing)

    def __call__(self, name, args=None, task_id=None, connection=None):
        if task_id in self.failing:
            raise ConnectionError("broker unreachable")
        self.ids.append(task_id)


@pytest.fixture
def settings():
    return config.load(
        {"REDIS_URL": "redis://placeholder:6379/0", "TASKBEAM_NAMESPACE": "t"}, need_secret=False
    )


@pytest.fixture
def rt(redis_client, settings, monkeypatch):
    runtime = worker.Runtime(
        settings, worker.broker.make_celery(settings), TaskStore(redis_client, settings), None
    )
    runtime.emitter = Emitter(runtime.store, Published(), retry_for_s=1)
    monkeypatch.setattr(runtime.celery, "send_task", Sent())
    return runtime


def job_of(func):
    """A kind running ``func`` with simulate's params."""
    return jobs.Job("simulate", func, jobs.SimulateParams, title="t", description="", units="u")


def new_task(rt, owner="alice", **params):
    return rt.store.create(kind="simulate", owner=owner, params=params)["id"]


def history(rt, task_id):
    return rt.store.events_after(task_id, 0)


def expire_lease(rt, task_id):
    rt.store.redis.zadd(rt.store.leases_key, {task_id: 0}, xx=True)


# --- fencing ----------------------------------------------------------------


def test_a_run_that_lost_its_lease_writes_nothing(rt):
    task_id = new_task(rt)
    old = rt.store.claim_run(task_id, 10)
    rt.store.append(task_id, token=old, state=protocol.RUNNING, progress=40)
    expire_lease(rt, task_id)
    assert rt.store.reap_expired_leases() == [task_id]
    assert rt.store.renew_lease(task_id, old, 10) is False  # the old run learns it lost
    new = rt.store.claim_run(task_id, 10)
    assert new == old + 1
    rt.store.append(task_id, token=new, state=protocol.RETRYING, progress=0)
    with pytest.raises(LeaseLost):
        rt.store.append(task_id, token=old, state=protocol.RUNNING, progress=60)
    with pytest.raises(LeaseLost):
        rt.store.append(task_id, token=old, state=protocol.SUCCEEDED, progress=100)
    rt.store.release_lease(task_id, old)  # the loser cannot free the new run's lease
    assert rt.store.renew_lease(task_id, new, 10) is True
    assert [(e["state"], e["progress"]) for e in history(rt, task_id)] == [
        ("queued", 0),
        ("running", 40),
        ("retrying", 0),
    ]


def test_a_reaped_lease_fences_the_old_run_before_anyone_claims(rt):
    task_id = new_task(rt)
    old = rt.store.claim_run(task_id, 10)
    expire_lease(rt, task_id)
    rt.store.reap_expired_leases()
    with pytest.raises(LeaseLost):
        rt.store.append(task_id, token=old, progress=50)


def test_claims_refuse_live_finished_and_missing_runs(rt):
    task_id = new_task(rt)
    token = rt.store.claim_run(task_id, 10)
    assert rt.store.claim_run(task_id, 10) is None
    rt.store.append(task_id, token=token, state=protocol.SUCCEEDED, progress=100)
    rt.store.release_lease(task_id, token)
    with pytest.raises(TaskFinished):
        rt.store.claim_run(task_id, 10)
    with pytest.raises(worker.TaskGone):
        rt.store.claim_run("nope", 10)


def test_frozen_run_stops_at_its_next_progress_update(rt, monkeypatch):
    """A whole TaskRun: it is 'frozen' inside the job while the task is handed to
    a second run; when it thaws, its next update stops it without a write."""
    monkeypatch.setattr(worker, "LEASE_S", 0.2)  # renewals every 50 ms
    task_id = new_task(rt, steps=3)
    outcome = {}

    def frozen_job(params):
        progress.update(1, 3, "one")
        expire_lease(rt, task_id)
        rt.store.reap_expired_leases()
        outcome["second"] = rt.store.claim_run(task_id, 10)
        rt.store.append(task_id, token=outcome["second"], state=protocol.RETRYING, progress=0)
        outcome["lost"] = run.lease.lost.wait(5)
        progress.update(2, 3, "two")  # raises LeaseLost
        outcome["went_on"] = True

    job = job_of(frozen_job)
    run = worker.TaskRun(job, task_id, {"steps": 3}, rt=rt)
    run()
    assert outcome["lost"] and "went_on" not in outcome
    states = [e["state"] for e in history(rt, task_id)]
    assert states == ["queued", "running", "retrying"]
    assert rt.store.record(task_id)["state"] == protocol.RETRYING
    assert rt.store.redis.zscore(rt.store.leases_key, task_id) is not None  # run 2's


def test_a_time_limit_between_a_redis_request_and_its_reply_desyncs_nothing(rt, monkeypatch):
    """Celery's soft time limit is raised wherever the job is, also after a Redis
    request was sent and before its reply was read: that connection must not hand
    the stale reply to the next command (the run's error event, the next task)."""
    task_id = new_task(rt, steps=3)
    read_response = redis_lib.connection.AbstractConnection.read_response

    def interrupted(self, *args, **kwargs):  # the signal, just before the read
        monkeypatch.setattr(redis_lib.connection.AbstractConnection, "read_response", read_response)
        raise SoftTimeLimitExceeded()

    def job(params):
        progress.update(1, 3, "one")
        monkeypatch.setattr(redis_lib.connection.AbstractConnection, "read_response", interrupted)
        # A request whose reply is not back yet when the connection is reused (redis-py
        # checks for unread data then), as a WAIT for a replica in Sentinel mode.
        rt.store.redis.execute_command("WAIT", 1, 300)

    worker.TaskRun(job_of(job), task_id,
                   {"steps": 3}, rt=rt)()  # fmt: skip
    last = history(rt, task_id)[-1]
    assert (last["state"], last["error"]["code"]) == (protocol.FAILED, "time_limit")
    assert [e["seq"] for e in history(rt, task_id)] == list(range(1, len(history(rt, task_id)) + 1))
    assert rt.store.redis.echo("next") == "next"  # not a reply meant for another command


# --- idempotent emits -----------------------------------------------------------


def test_a_retried_emit_after_a_lost_reply_is_written_once(rt, monkeypatch):
    task_id = new_task(rt)
    real_append, calls = rt.store.append, []

    def reply_lost_once(*args, **kwargs):
        result = real_append(*args, **kwargs)
        calls.append(kwargs["emit_id"])
        if len(calls) == 1:
            raise redis_lib.ConnectionError("connection reset after the write")
        return result

    monkeypatch.setattr(rt.store, "append", reply_lost_once)
    event, _ = rt.emitter.emit(task_id, state=protocol.RUNNING, progress=40)
    assert calls[0] == calls[1]
    assert [e["seq"] for e in history(rt, task_id)] == [1, 2]
    assert event["seq"] == 2 and event["progress"] == 40


# --- a terminal write that fails --------------------------------------------------


def test_a_refused_terminal_write_keeps_the_lease_for_the_reaper(rt, monkeypatch):
    task_id = new_task(rt)
    real_append = rt.store.append

    def oom_on_terminal(task, **patch):
        if patch.get("state") == protocol.SUCCEEDED:
            raise redis_lib.ResponseError("OOM command not allowed when used memory > 'maxmemory'")
        return real_append(task, **patch)

    monkeypatch.setattr(rt.store, "append", oom_on_terminal)
    job = job_of(lambda params: {"ok": 1})
    with pytest.raises(redis_lib.ResponseError):
        worker.TaskRun(job, task_id, {}, rt=rt)()
    assert rt.store.redis.zscore(rt.store.leases_key, task_id) is not None
    expire_lease(rt, task_id)
    assert worker.requeue_orphans(rt) == 1
    assert rt.celery.send_task.ids == [task_id]


# --- reaper -------------------------------------------------------------------


def test_one_failing_send_does_not_drop_the_other_orphans(rt, monkeypatch):
    first, second = new_task(rt), new_task(rt)
    for task_id in (first, second):
        rt.store.claim_run(task_id, 10)
        expire_lease(rt, task_id)
    monkeypatch.setattr(rt.celery, "send_task", Sent(failing={first}))
    assert worker.requeue_orphans(rt) == 1
    assert rt.celery.send_task.ids == [second]
    # The failed one has its lease back and goes out in the next round.
    rt.celery.send_task.failing.clear()
    assert worker.requeue_orphans(rt) == 1
    assert rt.celery.send_task.ids == [second, first]


# --- sweeper ------------------------------------------------------------------


def test_sweeper_sends_again_only_tasks_with_no_run_and_no_message(rt, monkeypatch):
    monkeypatch.setattr(worker, "STRANDED_AFTER_S", 0)
    lost, waiting, running = new_task(rt), new_task(rt), new_task(rt)
    finished = new_task(rt)
    rt.store.append(finished, state=protocol.CANCELLED)
    rt.store.claim_run(running, 10)
    queue = f"{rt.settings.namespace}:celery:celery"
    message = {"body": "", "headers": {"id": waiting, "task": "taskbeam.simulate"}}
    rt.store.redis.lpush(queue, json.dumps(message))
    assert broker.queued_task_ids(rt.store.redis, rt.celery) == {waiting}
    assert worker.sweep_stranded(rt) == 1
    assert rt.celery.send_task.ids == [lost]
    assert worker.sweep_stranded(rt) == 0  # one sweep per interval across workers


def test_sweeper_fails_a_task_whose_kind_is_gone(rt, monkeypatch):
    monkeypatch.setattr(worker, "STRANDED_AFTER_S", 0)
    task_id = rt.store.create(kind="retired", owner="alice", params={})["id"]
    worker.sweep_stranded(rt)
    assert rt.store.record(task_id)["state"] == protocol.FAILED
    assert json.loads(rt.store.record(task_id)["error"])["code"] == "unknown_kind"


# --- active-task cap and TTLs ----------------------------------------------------------


def test_active_task_cap_per_owner(rt):
    tasks = [
        rt.store.create(kind="simulate", owner="alice", params={}, max_active=2)["id"]
        for _ in range(2)
    ]
    with pytest.raises(TooManyActive):
        rt.store.create(kind="simulate", owner="alice", params={}, max_active=2)
    rt.store.create(kind="simulate", owner="bob", params={}, max_active=2)  # per owner
    rt.store.append(tasks[0], state=protocol.CANCELLED)
    rt.store.create(kind="simulate", owner="alice", params={}, max_active=2)
    # A task that expired unfinished no longer counts.
    rt.store.redis.delete(rt.store.task_key(tasks[1]))
    rt.store.create(kind="simulate", owner="alice", params={}, max_active=2)


def test_an_unfinished_task_expires(rt, settings):
    task_id = new_task(rt)
    limit = settings.task_retention_s + settings.task_time_limit_s
    for key in (rt.store.task_key(task_id), rt.store.events_key(task_id)):
        assert 0 < rt.store.redis.ttl(key) <= limit
    rt.store.append(task_id, state=protocol.CANCELLED)
    assert rt.store.redis.ttl(rt.store.task_key(task_id)) <= settings.task_retention_s
    assert rt.store.redis.zscore(rt.store.active_key, task_id) is None


def test_queued_task_ids_reads_what_celery_really_sends(
    redis_server, redis_client, settings, request
):
    """kombu's own key layout (prefix, queue list, unacked hash), not a guess."""
    app = broker.make_celery(settings)
    app.conf.broker_url = f"redis+socket://{redis_server}"
    request.addfinalizer(app.close)  # its pooled broker connection
    app.send_task("taskbeam.simulate", args=["abc", {}], task_id="abc")
    assert broker.queued_task_ids(redis_client, app) == {"abc"}
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue, no_ack=False)
        message = queue.get(timeout=5)  # delivered, not acknowledged: in `unacked`
        assert message.headers["id"] == "abc"
        assert redis_client.llen(f"{settings.namespace}:celery:celery") == 0
        assert broker.queued_task_ids(redis_client, app) == {"abc"}
        message.ack()
        queue.close()
    assert broker.queued_task_ids(redis_client, app) == set()


# --- progress counts ------------------------------------------------------------


def test_progress_events_carry_the_reports_counts_but_the_snapshot_does_not(rt):
    """done/total let a page show rows done and rows/s; they belong to one report."""
    task_id = new_task(rt, steps=4)
    run = worker.TaskRun(jobs.JOBS["simulate"], task_id, {"steps": 4, "step_ms": 0}, rt=rt)
    run()
    events = history(rt, task_id)
    reports = [(e.get("done"), e.get("total")) for e in events if e["message"].startswith("Step")]
    assert reports and reports[-1] == (4, 4)
    assert all(total == 4 and 1 <= done <= 4 for done, total in reports)
    assert all("done" not in e for e in events if not e["message"].startswith("Step"))
    assert "done" not in rt.store.record(task_id)

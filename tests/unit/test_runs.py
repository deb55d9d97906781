"""Runs against a real Redis: fencing tokens, leases, idempotent emits, the
active-task cap, the reaper and the sweeper (taskbeam/worker.py, taskbeam/housekeeping.py; the
store alone: test_store_runs.py and test_store_tasks.py).

The worker module is imported with a placeholder REDIS_URL (nothing connects at
import); every test builds its own runtime on the throwaway Redis, with a
recording stand-in for Flask-SocketIO's emitter and Celery's ``send_task``.
"""

import json
import os

import pytest
from celery.exceptions import SoftTimeLimitExceeded

import redis as redis_lib
from taskbeam import broker, config, housekeeping, progress, protocol
from taskbeam.emitter import Emitter
from taskbeam.store import TaskStore

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
def runtime(redis_client, settings, monkeypatch):
    runtime = worker.Runtime(
        settings, broker.make_celery(settings), TaskStore(redis_client, settings), None
    )
    runtime.emitter = Emitter(runtime.store, Published(), retry_for_s=1)
    monkeypatch.setattr(runtime.celery, "send_task", Sent())
    return runtime


def job_of(func):
    """A kind running ``func`` with simulate's params."""
    return jobs.Job("simulate", func, jobs.SimulateParams, title="t", description="", units="u")


def new_task(runtime, owner="alice", **params):
    return runtime.store.create(kind="simulate", owner=owner, params=params)["id"]


def history(runtime, task_id):
    return runtime.store.events_after(task_id, 0)


def expire_lease(runtime, task_id):
    runtime.store.redis.zadd(runtime.store.keys.leases, {task_id: 0}, xx=True)


# --- fencing ----------------------------------------------------------------


def test_frozen_run_stops_at_its_next_progress_update(runtime, monkeypatch):
    """A whole TaskRun: it is 'frozen' inside the job while the task is handed to
    a second run; when it thaws, its next update stops it without a write."""
    monkeypatch.setattr(worker, "LEASE_S", 0.2)  # renewals every 50 ms
    task_id = new_task(runtime, steps=3)
    outcome = {}

    def frozen_job(params):
        progress.update(1, 3, "one")
        expire_lease(runtime, task_id)
        runtime.store.reap_expired_leases()
        outcome["second"] = runtime.store.claim_run(task_id, 10)
        runtime.store.append(task_id, token=outcome["second"], state=protocol.RETRYING, progress=0)
        outcome["lost"] = run.lease.lost.wait(5)
        progress.update(2, 3, "two")  # raises LeaseLost
        outcome["went_on"] = True

    job = job_of(frozen_job)
    run = worker.TaskRun(job, task_id, {"steps": 3}, runtime=runtime)
    run()
    assert outcome["lost"] and "went_on" not in outcome
    states = [e["state"] for e in history(runtime, task_id)]
    assert states == ["queued", "running", "retrying"]
    assert runtime.store.record(task_id)["state"] == protocol.RETRYING
    assert runtime.store.redis.zscore(runtime.store.keys.leases, task_id) is not None  # run 2's


def test_a_time_limit_between_a_redis_request_and_its_reply_desyncs_nothing(runtime, monkeypatch):
    """Celery's soft time limit is raised wherever the job is, also after a Redis
    request was sent and before its reply was read: that connection must not hand
    the stale reply to the next command (the run's error event, the next task)."""
    task_id = new_task(runtime, steps=3)
    read_response = redis_lib.connection.AbstractConnection.read_response

    def interrupted(self, *args, **kwargs):  # the signal, just before the read
        monkeypatch.setattr(redis_lib.connection.AbstractConnection, "read_response", read_response)
        raise SoftTimeLimitExceeded()

    def job(params):
        progress.update(1, 3, "one")
        monkeypatch.setattr(redis_lib.connection.AbstractConnection, "read_response", interrupted)
        # A request whose reply is not back yet when the connection is reused (redis-py
        # checks for unread data then), as a WAIT for a replica in Sentinel mode.
        runtime.store.redis.execute_command("WAIT", 1, 300)

    worker.TaskRun(job_of(job), task_id,
                   {"steps": 3}, runtime=runtime)()  # fmt: skip
    last = history(runtime, task_id)[-1]
    assert (last["state"], last["error"]["code"]) == (protocol.FAILED, "time_limit")
    assert [e["seq"] for e in history(runtime, task_id)] == list(
        range(1, len(history(runtime, task_id)) + 1)
    )
    assert runtime.store.redis.echo("next") == "next"  # not a reply meant for another command


# --- idempotent emits -----------------------------------------------------------


def test_a_retried_emit_after_a_lost_reply_is_written_once(runtime, monkeypatch):
    task_id = new_task(runtime)
    real_append, calls = runtime.store.append, []

    def reply_lost_once(*args, **kwargs):
        result = real_append(*args, **kwargs)
        calls.append(kwargs["emit_id"])
        if len(calls) == 1:
            raise redis_lib.ConnectionError("connection reset after the write")
        return result

    monkeypatch.setattr(runtime.store, "append", reply_lost_once)
    event, _ = runtime.emitter.emit(task_id, state=protocol.RUNNING, progress=40)
    assert calls[0] == calls[1]
    assert [e["seq"] for e in history(runtime, task_id)] == [1, 2]
    assert event["seq"] == 2 and event["progress"] == 40


# --- a terminal write that fails --------------------------------------------------


def test_a_refused_terminal_write_keeps_the_lease_for_the_reaper(runtime, monkeypatch):
    task_id = new_task(runtime)
    real_append = runtime.store.append

    def oom_on_terminal(task, **patch):
        if patch.get("state") == protocol.SUCCEEDED:
            raise redis_lib.ResponseError("OOM command not allowed when used memory > 'maxmemory'")
        return real_append(task, **patch)

    monkeypatch.setattr(runtime.store, "append", oom_on_terminal)
    job = job_of(lambda params: {"ok": 1})
    with pytest.raises(redis_lib.ResponseError):
        worker.TaskRun(job, task_id, {}, runtime=runtime)()
    assert runtime.store.redis.zscore(runtime.store.keys.leases, task_id) is not None
    expire_lease(runtime, task_id)
    assert housekeeping.requeue_orphans(runtime) == 1
    assert runtime.celery.send_task.ids == [task_id]


# --- reaper -------------------------------------------------------------------


def test_one_failing_send_does_not_drop_the_other_orphans(runtime, monkeypatch):
    first, second = new_task(runtime), new_task(runtime)
    for task_id in (first, second):
        runtime.store.claim_run(task_id, 10)
        expire_lease(runtime, task_id)
    monkeypatch.setattr(runtime.celery, "send_task", Sent(failing={first}))
    assert housekeeping.requeue_orphans(runtime) == 1
    assert runtime.celery.send_task.ids == [second]
    # The failed one has its lease back and goes out in the next round.
    runtime.celery.send_task.failing.clear()
    assert housekeeping.requeue_orphans(runtime) == 1
    assert runtime.celery.send_task.ids == [second, first]


# --- sweeper ------------------------------------------------------------------


def test_sweeper_sends_again_only_tasks_with_no_run_and_no_message(runtime, monkeypatch):
    monkeypatch.setattr(housekeeping, "STRANDED_AFTER_S", 0)
    lost, waiting, running = new_task(runtime), new_task(runtime), new_task(runtime)
    finished = new_task(runtime)
    runtime.store.append(finished, state=protocol.CANCELLED)
    runtime.store.claim_run(running, 10)
    queue = f"{runtime.settings.namespace}:celery:celery"
    message = {"body": "", "headers": {"id": waiting, "task": "taskbeam.simulate"}}
    runtime.store.redis.lpush(queue, json.dumps(message))
    assert broker.queued_task_ids(runtime.store.redis, runtime.celery) == {waiting}
    assert housekeeping.sweep_stranded(runtime) == 1
    assert runtime.celery.send_task.ids == [lost]
    assert housekeeping.sweep_stranded(runtime) == 0  # one sweep per interval across workers


def test_sweeper_fails_a_task_whose_kind_is_gone(runtime, monkeypatch):
    monkeypatch.setattr(housekeeping, "STRANDED_AFTER_S", 0)
    task_id = runtime.store.create(kind="retired", owner="alice", params={})["id"]
    housekeeping.sweep_stranded(runtime)
    assert runtime.store.record(task_id)["state"] == protocol.FAILED
    assert json.loads(runtime.store.record(task_id)["error"])["code"] == "unknown_kind"


# --- active-task cap and TTLs ----------------------------------------------------------


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


def test_progress_events_carry_the_reports_counts_but_the_snapshot_does_not(runtime):
    """done/total let a page show rows done and rows/s; they belong to one report."""
    task_id = new_task(runtime, steps=4)
    run = worker.TaskRun(
        jobs.JOBS["simulate"], task_id, {"steps": 4, "step_ms": 0}, runtime=runtime
    )
    run()
    events = history(runtime, task_id)
    reports = [(e.get("done"), e.get("total")) for e in events if e["message"].startswith("Step")]
    assert reports and reports[-1] == (4, 4)
    assert all(total == 4 and 1 <= done <= 4 for done, total in reports)
    assert all("done" not in e for e in events if not e["message"].startswith("Step"))
    assert "done" not in runtime.store.record(task_id)

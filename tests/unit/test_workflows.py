"""Workflows and stages against a real Redis (taskbeam/store/workflows.py, the
roll-up in scripts.APPEND, the worker's workflow runs): the children stored with the
parent, the parent's bar rolled up from them (weighted, never back, each child once),
one terminal event after the fan-in, failures and cancels, the 10-a-second cap.

The worker runs in this process: each TaskRun is called by the test, in the order
a test wants; Celery's ``send_task`` only records what would be sent.
"""

import os

import pytest
from pydantic import BaseModel

from taskbeam import broker, config, progress, protocol, registry, tasks, workflows
from taskbeam.emitter import Emitter
from taskbeam.store import LeaseLost, TaskStore

os.environ.setdefault("REDIS_URL", "redis://placeholder:6379/0")
from taskbeam import jobs, worker  # noqa: E402  (needs REDIS_URL at import)


class Published:
    def __init__(self):
        self.events = []

    def emit(self, event, data, to=None):
        self.events.append((to, data))


class Sent:
    def __init__(self):
        self.ids = []

    def __call__(self, name, args=None, task_id=None, connection=None, headers=None):
        self.ids.append(task_id)


@pytest.fixture
def settings():
    env = {"REDIS_URL": "redis://placeholder:6379/0", "TASKBEAM_NAMESPACE": "t"}
    env |= {"MAX_WORKFLOW_CHILDREN": "50", "PROGRESS_COALESCE_MS": "0"}
    return config.load(env, need_secret=False)


@pytest.fixture
def rt(redis_client, settings, monkeypatch):
    runtime = worker.Runtime(
        settings, broker.make_celery(settings), TaskStore(redis_client, settings), None
    )
    runtime.emitter = Emitter(runtime.store, Published(), retry_for_s=1)
    monkeypatch.setattr(runtime.celery, "send_task", Sent())
    return runtime


def create(rt, kind="primes", **params):
    job, clean, plan = tasks.validate(kind, params, rt.settings)
    return tasks.enqueue(
        job,
        clean,
        plan,
        owner="alice",
        store=rt.store,
        celery=rt.celery,
        announce=lambda owner, snapshot: None,
        create=rt.store.create,
    )


def run(rt, task_id):
    """One delivery of ``task_id`` to a worker, as Celery would make it."""
    rec = rt.store.record(task_id)
    params = rt.store.snapshot_of(rec)["params"]
    worker.TaskRun(registry.get(rec["kind"]), task_id, params, runtime=rt)()


def history(rt, task_id):
    return rt.store.events_after(task_id, 0)


def children(rt, parent):
    return rt.store.child_ids(parent)


def assert_whole(events):
    """Gapless, one terminal event at the end, progress never going back."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    states = [e["state"] for e in events]
    assert sum(s in protocol.TERMINAL_STATES for s in states) == 1
    assert states[-1] in protocol.TERMINAL_STATES
    progress_seen = [e["progress"] for e in events]
    assert progress_seen == sorted(progress_seen), progress_seen


# --- creation -------------------------------------------------------------------


def test_a_workflow_is_stored_with_its_children_queued_and_not_listed(rt):
    parent = create(rt, limit=10_000, shards=4, slow_ms=0)
    assert parent["children"] == {"total": 4, "done": 0, "failed": 0}
    kids = children(rt, parent["id"])
    assert len(kids) == 4
    for i, kid in enumerate(kids):
        snap = rt.store.snapshot_of(rt.store.record(kid))
        assert (snap["state"], snap["kind"], snap["parent"]) == (
            "queued",
            "count_primes",
            parent["id"],
        )
        assert snap["params"]["start"] == 10_000 * i // 4
        assert [e["state"] for e in history(rt, kid)] == ["queued"]
    assert [t["id"] for t in rt.store.list_for_owner("alice")] == [parent["id"]]
    assert rt.celery.send_task.ids == [parent["id"]]  # the parent's run sends the children


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"shards": 51}, "a workflow has 1 to 50 children, got 51"),  # MAX_WORKFLOW_CHILDREN
        ({"limit": 10}, "limit"),  # the parent's own model
    ],
)
def test_a_bad_plan_is_refused_before_anything_is_stored(rt, params, reason):
    with pytest.raises(registry.ParamError, match=reason):
        create(rt, **params)
    assert rt.store.redis.dbsize() == 0


def test_a_plan_naming_a_missing_kind_or_a_bad_weight_is_refused(rt):
    class Empty(BaseModel):
        pick: int = 0

    plans = [
        [workflows.Child("no_such_kind", {})],
        [workflows.Child("count_primes", {"start": 0, "stop": 10}, weight=0)],
        [workflows.Child("count_primes", {"start": 0, "stop": 10}, weight=float("nan"))],
        [workflows.Child("count_primes", {"start": 0, "stop": "ten"})],
        [workflows.Child("primes", {})],  # no workflows inside workflows
    ]
    try:
        registry.workflow("bad_plans", params=Empty)(lambda params: plans[params.pick])
        for pick, reason in enumerate(
            ["not a job kind", "positive", "positive", "stop", "not a job"]
        ):
            with pytest.raises(registry.ParamError, match=reason):
                create(rt, "bad_plans", pick=pick)
    finally:
        registry.JOBS.pop("bad_plans", None)
    assert rt.store.redis.dbsize() == 0


def test_a_kind_that_only_runs_as_a_child_cannot_be_created_alone(rt):
    with pytest.raises(registry.UnknownKind):
        create(rt, "count_primes", start=0, stop=10)


def test_stages_are_checked_when_a_kind_registers():
    class P(BaseModel):
        pass

    for stages in ({"a": 0}, {"a": -1}, {"": 1}, [("a", 1), ("a", 2)], {"a": True}):
        with pytest.raises(registry.RegistryError):
            registry.job("bad_stages", params=P, stages=stages)
    with pytest.raises(registry.RegistryError, match="two"):
        registry.workflow("bad_wf", params=P, fan_in=lambda p, r: None, stages={"only": 1})
    assert "bad_stages" not in registry.JOBS and "bad_wf" not in registry.JOBS


# --- the roll-up ------------------------------------------------------------------


def test_children_roll_up_into_one_bar_and_the_fan_in_ends_it_once(rt):
    parent = create(rt, limit=20_000, shards=5, slow_ms=0)
    pid = parent["id"]
    run(rt, pid)  # sends the children, stays running
    assert rt.celery.send_task.ids[1:] == children(rt, pid)
    assert rt.store.record(pid)["state"] == "running"
    for kid in children(rt, pid):
        run(rt, kid)
    # The last child asked for the fan-in: the parent sent again.
    assert rt.celery.send_task.ids[-1] == pid
    rt.store.redis.zadd(rt.store.keys.rollups, {pid: 0})  # nothing held back survives a flush
    rt.emitter.flush_rollups()
    run(rt, pid)
    events = history(rt, pid)
    assert_whole(events)
    last = events[-1]
    assert last["state"] == "succeeded"
    assert last["result"] == {"primes": 2262, "shards": 5, "failed": 0}  # pi(20000)
    assert last["message"] == "2262 primes"
    staged = [e for e in events if e.get("stage")]
    assert {e["stage"] for e in staged} == {"Counting", "Summing"}
    counting = [e for e in events if e.get("stage") == "Counting" and "done" in e]
    assert counting and counting[-1]["done"] == 5 and counting[-1]["total"] == 5
    assert max(e["progress"] for e in counting) == 90.0  # the children's share
    snap = rt.store.snapshot_of(rt.store.record(pid))
    assert snap["children"] == {"total": 5, "done": 5, "failed": 0}


def test_a_child_run_again_from_zero_never_moves_the_parent_back(rt):
    parent = create(rt, limit=10_000, shards=2, slow_ms=0)
    pid = parent["id"]
    run(rt, pid)
    first, second = children(rt, pid)
    token = rt.store.claim_run(first, 10)
    rt.store.append(first, token=token, state="running", progress=0)
    rt.store.append(first, token=token, state="running", progress=80)
    rollup = float(rt.store.redis.hget(rt.store.keys.task(pid), "rollup"))
    # Its worker dies; a new run starts over and reports less than the lost one did.
    rt.store.redis.zadd(rt.store.keys.leases, {first: 0}, xx=True)
    rt.store.reap_expired_leases()
    again = rt.store.claim_run(first, 10)
    rt.store.append(first, token=again, state="retrying", progress=0)
    rt.store.append(first, token=again, state="running", progress=30)
    assert float(rt.store.redis.hget(rt.store.keys.task(pid), "rollup")) == rollup
    with pytest.raises(LeaseLost):  # the frozen first run is fenced off: adds nothing
        rt.store.append(first, token=token, state="running", progress=100)
    rt.store.append(first, token=again, state="succeeded", progress=100, result={"primes": 0})
    run(rt, second)
    rt.emitter.flush_rollups()
    rec = rt.store.record(pid)
    assert (rec["kids_done"], rec["phase"]) == ("2", "fanin")
    # 100 % of both children, counted once each: the children's share of the bar.
    assert float(rec["rollup"]) == 100 * 5_000 * 2
    assert_whole(history(rt, pid) + [{"seq": len(history(rt, pid)) + 1, "state": "succeeded",
                                      "progress": 100.0}])  # fmt: skip


def test_a_failed_child_fails_the_parent_once_and_cancels_the_queued_rest(rt):
    parent = create(rt, limit=10_000, shards=4, slow_ms=0, fail_shard=1)
    pid = parent["id"]
    run(rt, pid)
    kids = children(rt, pid)
    run(rt, kids[0])
    run(rt, kids[1])  # fails
    events = history(rt, pid)
    assert_whole(events)
    assert events[-1]["state"] == "failed"
    assert events[-1]["error"]["code"] == "child_failed"
    assert "Child 1 failed" in events[-1]["error"]["message"]
    for kid in kids[2:]:  # never started: ended at once
        assert [e["state"] for e in history(rt, kid)] == ["queued", "cancelled"]
        run(rt, kid)  # their messages, delivered later: nothing runs
        assert [e["state"] for e in history(rt, kid)] == ["queued", "cancelled"]
    assert rt.store.redis.zscore(rt.store.keys.active, pid) is None


def test_with_failures_allowed_the_fan_in_gets_none_for_the_failed_child(rt):
    parent = create(rt, limit=10_000, shards=3, slow_ms=0, fail_shard=2, allow_failures=True)
    pid = parent["id"]
    run(rt, pid)
    for kid in children(rt, pid):
        run(rt, kid)
    run(rt, pid)
    last = history(rt, pid)[-1]
    assert last["state"] == "succeeded"
    assert last["result"]["failed"] == 1 and last["result"]["shards"] == 3
    assert rt.store.snapshot_of(rt.store.record(pid))["children"]["failed"] == 1


def test_cancelling_the_children_ends_queued_ones_and_stops_running_ones(rt):
    parent = create(rt, limit=10_000, shards=3, slow_ms=0)
    pid = parent["id"]
    run(rt, pid)
    first, *rest = children(rt, pid)
    token = rt.store.claim_run(first, 10)
    rt.store.append(first, token=token, state="running", progress=10)
    rt.emitter.emit(pid, state="cancelled", message="Cancelled")
    assert rt.emitter.cancel_children(pid) == 3
    for kid in rest:
        assert rt.store.record(kid)["state"] == "cancelled"
    _, cancel = rt.emitter.emit(first, token=token, state="running", progress=20)
    assert cancel  # the running child stops at its next report
    assert_whole(history(rt, pid))


def test_the_parent_gets_at_most_ten_events_a_second_and_the_rest_is_flushed(rt):
    parent = create(rt, limit=100_000, shards=50, slow_ms=0)
    pid = parent["id"]
    run(rt, pid)
    before = len(history(rt, pid))
    tokens = {kid: rt.store.claim_run(kid, 10) for kid in children(rt, pid)}
    for kid, token in tokens.items():  # 50 children report within a few ms
        rt.store.append(kid, token=token, state="running", progress=50)
    burst = len(history(rt, pid)) - before
    assert burst <= 2, burst
    assert rt.store.redis.zscore(rt.store.keys.rollups, pid) is not None
    rt.store.redis.zadd(rt.store.keys.rollups, {pid: 0})  # as if 100 ms passed
    assert rt.emitter.flush_rollups() == 1
    assert history(rt, pid)[-1]["progress"] == 45.0  # half of the children's 90 %


def test_deleting_a_finished_workflow_removes_its_children(rt):
    parent = create(rt, limit=10_000, shards=2, slow_ms=0)
    pid = parent["id"]
    rt.emitter.emit(pid, state="cancelled", message="Cancelled")
    rt.emitter.cancel_children(pid)
    assert rt.store.remove_finished(pid, "alice")
    assert rt.store.redis.keys("t:task:*") == []


# --- stages ---------------------------------------------------------------------


def test_a_staged_job_reports_the_weighted_whole_and_names_its_stage(rt):
    class P(BaseModel):
        pass

    def staged(params):
        progress.stage("query")
        progress.update(1, 2)
        progress.stage("render")
        progress.update(1, 4)
        progress.update(4, 4)
        return {}

    registry.job("staged_test", params=P, stages={"query": 10, "render": 80, "upload": 10})(staged)
    try:
        snap = rt.store.create(kind="staged_test", owner="alice", params={})
        worker.TaskRun(registry.get("staged_test"), snap["id"], {}, runtime=rt)()
    finally:
        registry.JOBS.pop("staged_test")
    running = [e for e in history(rt, snap["id"]) if e["state"] == "running"]
    seen = [(e.get("stage"), e["progress"]) for e in running]
    assert seen == [
        (None, 0.0),
        ("query", 0.0),
        ("query", 5.0),
        ("render", 10.0),
        ("render", 30.0),
        ("render", 90.0),
    ]
    assert history(rt, snap["id"])[-1]["state"] == "succeeded"


def test_a_stage_the_kind_does_not_declare_fails_the_task(rt):
    class P(BaseModel):
        pass

    registry.job("staged_bad", params=P, stages={"one": 1})(lambda p: progress.stage("two"))
    try:
        snap = rt.store.create(kind="staged_bad", owner="alice", params={})
        worker.TaskRun(registry.get("staged_bad"), snap["id"], {}, runtime=rt)()
    finally:
        registry.JOBS.pop("staged_bad")
    last = history(rt, snap["id"])[-1]
    assert (last["state"], last["error"]["code"]) == ("failed", "internal_error")


def test_the_shipped_demo_workflow_is_described_for_the_page():
    kinds = {j.kind: j.describe() for j in registry.JOBS.values() if j.listed}
    assert "count_primes" not in kinds
    assert kinds["primes"]["workflow"] is True
    assert kinds["primes"]["stages"] == [
        {"name": "Counting", "weight": 90.0},
        {"name": "Summing", "weight": 10.0},
    ]
    assert jobs.JOBS["simulate"].describe()["stages"] == []

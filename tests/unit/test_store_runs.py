"""Runs and leases against a real Redis (taskbeam/store/runs.py): fencing tokens,
claims, the reaper's take, and the operator's gauges. The worker's use of them
(reaping, sweeping, a frozen run) is tested in test_runs.py."""

import pytest

from taskbeam import protocol
from taskbeam.store import LeaseLost, TaskFinished, TaskGone


def new_task(store, owner="alice", **params):
    return store.create(kind="simulate", owner=owner, params=params)["id"]


def history(store, task_id):
    return store.events_after(task_id, 0)


def expire_lease(store, task_id):
    store.redis.zadd(store.keys.leases, {task_id: 0}, xx=True)


def test_a_run_that_lost_its_lease_writes_nothing(store):
    task_id = new_task(store)
    old = store.claim_run(task_id, 10)
    store.append(task_id, token=old, state=protocol.RUNNING, progress=40)
    expire_lease(store, task_id)
    assert store.reap_expired_leases() == [task_id]
    assert store.renew_lease(task_id, old, 10) is False  # the old run learns it lost
    new = store.claim_run(task_id, 10)
    assert new == old + 1
    store.append(task_id, token=new, state=protocol.RETRYING, progress=0)
    with pytest.raises(LeaseLost):
        store.append(task_id, token=old, state=protocol.RUNNING, progress=60)
    with pytest.raises(LeaseLost):
        store.append(task_id, token=old, state=protocol.SUCCEEDED, progress=100)
    store.release_lease(task_id, old)  # the loser cannot free the new run's lease
    assert store.renew_lease(task_id, new, 10) is True
    assert [(e["state"], e["progress"]) for e in history(store, task_id)] == [
        ("queued", 0),
        ("running", 40),
        ("retrying", 0),
    ]


def test_a_reaped_lease_fences_the_old_run_before_anyone_claims(store):
    task_id = new_task(store)
    old = store.claim_run(task_id, 10)
    expire_lease(store, task_id)
    store.reap_expired_leases()
    with pytest.raises(LeaseLost):
        store.append(task_id, token=old, progress=50)


def test_claims_refuse_live_finished_and_missing_runs(store):
    task_id = new_task(store)
    token = store.claim_run(task_id, 10)
    assert store.claim_run(task_id, 10) is None
    store.append(task_id, token=token, state=protocol.SUCCEEDED, progress=100)
    store.release_lease(task_id, token)
    with pytest.raises(TaskFinished):
        store.claim_run(task_id, 10)
    with pytest.raises(TaskGone):
        store.claim_run("nope", 10)


def test_queued_running_and_the_oldest_queued_age(store):
    assert store.operator_gauges() == {
        "tasks_queued": 0,
        "oldest_queued_age_seconds": 0,
        "tasks_running": 0,
        "workers_alive": 0,
    }
    first = store.create(kind="simulate", owner="alice", params={}, now=1000.0)["id"]
    store.create(kind="simulate", owner="bob", params={}, now=1030.0)
    store.claim_run(first, lease_s=10)
    store.append(first, state="running", message="Running")

    gauges = store.operator_gauges(now=1100.0)
    assert gauges["tasks_queued"] == 1
    assert gauges["oldest_queued_age_seconds"] == 70.0  # bob's, created at 1030
    assert gauges["tasks_running"] == 1


def test_workers_count_while_they_report_and_drop_out_when_they_stop(store):
    store.worker_alive("w1", now=1000.0)
    store.worker_alive("w2", now=1010.0)
    assert store.operator_gauges(now=1012.0)["workers_alive"] == 2
    assert store.operator_gauges(now=1020.0)["workers_alive"] == 1  # w1 silent for 20 s
    store.worker_alive("w3", now=1000.0 + 2 * 86_400)
    assert store.redis.zrange(store.keys.workers, 0, -1) == ["w3"]  # a day silent: forgotten

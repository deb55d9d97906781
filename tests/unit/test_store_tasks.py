"""Tasks and their event log against a real Redis (taskbeam/store/tasks.py):
creation under the active-task cap, expiry, removal of a finished task, queue
positions and snapshots. DELETE /api/tasks/<id> is tested in test_clear_and_queue.py,
the bytes the append publishes in test_emitter_publish.py."""

import pytest

from taskbeam import protocol
from taskbeam.store import TaskGone, TooManyActive


def new_task(store, owner="alice", **params):
    return store.create(kind="simulate", owner=owner, params=params)["id"]


def finish(store, task_id, state=protocol.SUCCEEDED):
    store.append(task_id, state=protocol.RUNNING, message="Running")
    store.append(task_id, state=state, progress=100, message="Done")


def keys_naming(store, task_id):
    """Every key that is or holds the task id."""
    found = [k for k in store.redis.keys("*") if task_id in k]
    for key in store.redis.keys("*"):
        kind = store.redis.type(key)
        if kind == "zset" and store.redis.zscore(key, task_id) is not None:
            found.append(key)
        elif kind == "set" and store.redis.sismember(key, task_id):
            found.append(key)
    return found


def test_active_task_cap_per_owner(store):
    tasks = [
        store.create(kind="simulate", owner="alice", params={}, max_active=2)["id"]
        for _ in range(2)
    ]
    with pytest.raises(TooManyActive):
        store.create(kind="simulate", owner="alice", params={}, max_active=2)
    store.create(kind="simulate", owner="bob", params={}, max_active=2)  # per owner
    store.append(tasks[0], state=protocol.CANCELLED)
    store.create(kind="simulate", owner="alice", params={}, max_active=2)
    # A task that expired unfinished no longer counts.
    store.redis.delete(store.keys.task(tasks[1]))
    store.create(kind="simulate", owner="alice", params={}, max_active=2)


def test_an_unfinished_task_expires(store, settings):
    task_id = new_task(store)
    limit = settings.task_retention_s + settings.task_time_limit_s
    for key in (store.keys.task(task_id), store.keys.events(task_id)):
        assert 0 < store.redis.ttl(key) <= limit
    store.append(task_id, state=protocol.CANCELLED)
    assert store.redis.ttl(store.keys.task(task_id)) <= settings.task_retention_s
    assert store.redis.zscore(store.keys.active, task_id) is None


def test_removing_a_finished_task_leaves_no_key_naming_it(store):
    kept = store.create(kind="simulate", owner="alice", params={})["id"]
    task_id = store.create(kind="simulate", owner="alice", params={})["id"]
    finish(store, task_id)
    store.redis.zadd(store.keys.leases, {task_id: 0})  # a stale lease entry, say

    assert store.remove_finished(task_id, "alice") is True
    assert keys_naming(store, task_id) == []
    assert [s["id"] for s in store.list_for_owner("alice")] == [kept]


@pytest.mark.parametrize("state", [protocol.QUEUED, protocol.RUNNING, protocol.RETRYING])
def test_an_unfinished_task_is_not_removed(store, state):
    task_id = store.create(kind="simulate", owner="alice", params={})["id"]
    if state != protocol.QUEUED:
        store.append(task_id, state=state, message=state)

    assert store.remove_finished(task_id, "alice") is False
    assert store.record(task_id)["state"] == state
    assert len(store.events_after(task_id, 0)) >= 1


def test_only_the_owner_removes_a_task(store):
    task_id = store.create(kind="simulate", owner="alice", params={})["id"]
    finish(store, task_id, protocol.FAILED)
    with pytest.raises(TaskGone):
        store.remove_finished(task_id, "mallory")
    with pytest.raises(TaskGone):
        store.remove_finished("NoSuchTaskAtAll0", "alice")
    assert store.record(task_id) is not None


def test_queue_position_counts_every_owners_tasks_not_yet_started(store):
    a = store.create(kind="simulate", owner="alice", params={}, now=100)["id"]
    b = store.create(kind="simulate", owner="bob", params={}, now=101)["id"]
    c = store.create(kind="simulate", owner="alice", params={}, now=102)["id"]

    def positions(now=200):
        snaps = store.add_queue_positions(store.list_for_owner("alice"), now=now)
        return {s["id"]: s.get("queue_position") for s in snaps}

    assert positions() == {a: 1, c: 3}
    store.append(a, state=protocol.RUNNING, message="Running")  # started: leaves the queue
    assert positions() == {a: None, c: 2}
    store.append(b, state=protocol.CANCELLED, message="Cancelled")
    assert positions() == {a: None, c: 1}


def test_tasks_that_expired_before_they_started_do_not_count(store):
    gone = store.create(kind="simulate", owner="bob", params={}, now=100)["id"]
    store.redis.delete(store.keys.task(gone))  # its keys expired
    late = store.create(kind="simulate", owner="alice", params={}, now=100 + 10)["id"]
    now = 100 + store.unfinished_ttl_s + 1
    [snap] = store.add_queue_positions(store.list_for_owner("alice"), now=now)
    assert snap["id"] == late and snap["queue_position"] == 1


def test_snapshots_say_when_a_task_started_and_finished_and_with_what_params(store):
    task_id = store.create(kind="simulate", owner="alice", params={"steps": 3}, now=100)["id"]
    snap = store.snapshot_of(store.record(task_id))
    assert snap["params"] == {"steps": 3}
    assert "started_at" not in snap and "finished_at" not in snap
    store.append(task_id, 101.5, state=protocol.RUNNING, message="Running")
    store.append(task_id, 102, state=protocol.RETRYING, message="again")
    store.append(task_id, 103, state=protocol.RUNNING, message="Running")  # keeps the first
    store.append(task_id, 104.25, state=protocol.SUCCEEDED, progress=100, message="Done")
    snap = store.snapshot_of(store.record(task_id))
    assert snap["started_at"] == protocol.iso_utc(101.5)
    assert snap["finished_at"] == protocol.iso_utc(104.25)

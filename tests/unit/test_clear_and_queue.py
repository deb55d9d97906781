"""Clearing finished tasks (DELETE /api/tasks/<id>) and the queue position of queued
tasks, against the real store on a throwaway Redis (taskbeam/store.py, web/api.py)."""

from types import SimpleNamespace

import pytest
from flask import Flask, session

from taskbeam import config, protocol
from taskbeam.store import TaskGone, TaskStore
from taskbeam.web import api, identity


@pytest.fixture
def settings():
    return config.load(
        {
            "REDIS_URL": "redis://placeholder:6379/0",
            "SECRET_KEY": "k0123456789" * 4,
            "TASKBEAM_NAMESPACE": "t",
        }
    )


@pytest.fixture
def store(redis_client, settings):
    return TaskStore(redis_client, settings)


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


# --- store ------------------------------------------------------------------


def test_removing_a_finished_task_leaves_no_key_naming_it(store):
    kept = store.create(kind="simulate", owner="alice", params={})["id"]
    task_id = store.create(kind="simulate", owner="alice", params={})["id"]
    finish(store, task_id)
    store.redis.zadd(store.leases_key, {task_id: 0})  # a stale lease entry, say

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
    store.redis.delete(store.task_key(gone))  # its keys expired
    late = store.create(kind="simulate", owner="alice", params={}, now=100 + 10)["id"]
    now = 100 + store.unfinished_ttl_s + 1
    [snap] = store.add_queue_positions(store.list_for_owner("alice"), now=now)
    assert snap["id"] == late and snap["queue_position"] == 1


# --- API --------------------------------------------------------------------


@pytest.fixture
def client(store, settings):
    app = Flask(__name__)
    app.config.update(SECRET_KEY=settings.secret_key)
    app.extensions["taskbeam"] = SimpleNamespace(
        settings=settings,
        store=store,
        redis=store.redis,
        identity=identity.Identity(settings.auth),
    )

    @app.before_request
    def owner():
        session.setdefault("owner", "alice")

    app.register_blueprint(api.bp)
    api.register_error_handlers(app)
    return app.test_client()


def test_delete_answers_204_and_the_task_is_gone(client, store):
    task_id = store.create(kind="simulate", owner="alice", params={})["id"]
    finish(store, task_id, protocol.CANCELLED)
    response = client.delete(f"/api/tasks/{task_id}")
    assert response.status_code == 204 and response.data == b""
    assert client.get(f"/api/tasks/{task_id}").status_code == 404
    assert client.delete(f"/api/tasks/{task_id}").json["error"]["code"] == "not_found"


def test_delete_of_an_unfinished_task_is_409_not_finished(client, store):
    task_id = store.create(kind="simulate", owner="alice", params={})["id"]
    response = client.delete(f"/api/tasks/{task_id}")
    assert response.status_code == 409
    assert response.json["error"]["code"] == "not_finished"
    assert client.get(f"/api/tasks/{task_id}").status_code == 200


def test_delete_of_another_sessions_task_is_404(client, store):
    task_id = store.create(kind="simulate", owner="bob", params={})["id"]
    finish(store, task_id)
    response = client.delete(f"/api/tasks/{task_id}")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert store.record(task_id) is not None


def test_snapshots_carry_the_queue_position_while_queued(client, store):
    first = store.create(kind="simulate", owner="bob", params={})["id"]
    mine = store.create(kind="simulate", owner="alice", params={})["id"]
    assert client.get(f"/api/tasks/{mine}").json["queue_position"] == 2
    assert client.get("/api/tasks").json["tasks"][0]["queue_position"] == 2
    store.append(first, state=protocol.RUNNING, message="Running")
    store.append(mine, state=protocol.RUNNING, message="Running")
    assert "queue_position" not in client.get(f"/api/tasks/{mine}").json


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

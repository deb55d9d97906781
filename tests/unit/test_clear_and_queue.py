"""Clearing finished tasks (DELETE /api/tasks/<id>) and the queue position of queued
tasks, through the API on the real store and a throwaway Redis (web/api.py; the store
alone: test_store_tasks.py)."""

from types import SimpleNamespace

import pytest
from flask import Flask, session

from taskbeam import config, protocol
from taskbeam.store import TaskStore
from taskbeam.web import api, errors, identity


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


# --- store ------------------------------------------------------------------


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
    errors.register_error_handlers(app)
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

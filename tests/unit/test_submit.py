"""taskbeam.submit(): the API's validation, limits and snapshot, from a team's own code
(real Redis; the broker's send and the message-queue emit are recorded)."""

import pytest

import taskbeam
from taskbeam import config, jobs, protocol, submitting  # noqa: F401  (jobs: shipped kinds)
from taskbeam.broker import make_celery
from taskbeam.runtime import Runtime
from taskbeam.store import TaskStore


class Recorder:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def __call__(self, *args, **kwargs):
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.calls.append((args, kwargs))


@pytest.fixture
def runtime(redis_client, monkeypatch):
    settings = config.load(
        {"REDIS_URL": "redis://placeholder:6379/0", "MAX_ACTIVE_TASKS": "2"}, need_secret=False
    )
    emitted = Recorder()
    runtime = Runtime(settings, make_celery(settings), TaskStore(redis_client, settings), None)
    runtime.emitter = type("E", (), {"socketio": type("S", (), {"emit": emitted})()})()
    monkeypatch.setattr(runtime.celery, "send_task", Recorder())
    runtime.emitted = emitted
    return runtime


def test_submit_stores_sends_and_tells_the_owners_pages(runtime, monkeypatch):
    monkeypatch.delenv("AUTH_MODE", raising=False)
    snap = submitting.submit("simulate", {"steps": 3}, owner="alice", runtime=runtime)
    assert snap["state"] == "queued" and snap["seq"] == 1 and snap["kind"] == "simulate"
    owner = protocol.owner_id("app", "alice")  # as the extension's owner_of names alice
    assert runtime.store.owned_record(snap["id"], owner) is not None
    ((args, kwargs),) = runtime.celery.send_task.calls
    assert args == ("taskbeam.simulate",) and kwargs["args"] == [
        snap["id"],
        {"steps": 3, "step_ms": 250},
    ]
    ((args, kwargs),) = runtime.emitted.calls
    assert args == ("task_created", snap) and kwargs == {"to": protocol.owner_room(owner)}


def test_submit_names_the_owner_as_the_web_does_in_jwt_mode(runtime, monkeypatch):
    monkeypatch.setenv("AUTH_MODE", "jwt")
    monkeypatch.setenv("JWT_ISSUER", "https://login.example")
    snap = submitting.submit("simulate", {}, owner="alice", runtime=runtime)
    owner = protocol.owner_id("jwt", '["https://login.example", "alice"]')
    assert runtime.store.owned_record(snap["id"], owner) is not None


def test_bad_params_and_kinds_raise_the_apis_errors_and_store_nothing(runtime, redis_client):
    with pytest.raises(taskbeam.ParamError) as caught:
        submitting.submit("simulate", {"steps": "3"}, owner="alice", runtime=runtime)
    assert caught.value.field == "steps"
    with pytest.raises(taskbeam.UnknownKind):
        submitting.submit("nope", {}, owner="alice", runtime=runtime)
    with pytest.raises(ValueError):
        submitting.submit("simulate", {}, owner="", runtime=runtime)
    assert redis_client.dbsize() == 0 and not runtime.celery.send_task.calls


def test_submit_keeps_max_active_tasks(runtime):
    for _ in range(2):
        submitting.submit("simulate", {}, owner="bob", runtime=runtime)
    with pytest.raises(taskbeam.TooManyActive):
        submitting.submit("simulate", {}, owner="bob", runtime=runtime)


def test_a_refused_broker_leaves_no_task(runtime, redis_client, monkeypatch):
    monkeypatch.setattr(runtime.celery, "send_task", Recorder(fail=True))
    with pytest.raises(taskbeam.QueueUnavailable):
        submitting.submit("simulate", {}, owner="carol", runtime=runtime)
    owner = protocol.owner_id("app", "carol")
    assert runtime.store.list_for_owner(owner) == []
    assert not runtime.emitted.calls


def test_params_may_be_the_kinds_model(runtime):
    from taskbeam.jobs import SimulateParams

    snap = submitting.submit("simulate", SimulateParams(steps=4), owner="dave", runtime=runtime)
    ((args, kwargs),) = runtime.celery.send_task.calls
    assert kwargs["args"][1] == {"steps": 4, "step_ms": 250}
    assert snap["kind"] == "simulate"


def test_inside_an_app_of_your_own_its_login_names_the_owner(runtime, monkeypatch):
    """With the extension (owner_of), submit() from a view names the owner as the app's
    login does, even if AUTH_MODE says otherwise in that environment."""
    from types import SimpleNamespace

    from flask import Flask

    monkeypatch.setenv("AUTH_MODE", "jwt")
    app = Flask(__name__)
    app.extensions["taskbeam"] = SimpleNamespace(identity=SimpleNamespace(mode="app"))
    with app.app_context():
        snap = submitting.submit("simulate", {}, owner="alice", runtime=runtime)
    assert runtime.store.owned_record(snap["id"], protocol.owner_id("app", "alice")) is not None

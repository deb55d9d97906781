"""The subscribe handler (taskbeam/web/sockets.py) on a real python-socketio server and
a real store: what it leaves behind when the task goes away while it subscribes."""

from types import SimpleNamespace

import engineio.socket
import pytest
import socketio

import redis
from taskbeam import config, protocol
from taskbeam.store import TaskStore
from taskbeam.web import sockets
from taskbeam.web.metrics import Metrics

OWNER = "o" * 32


@pytest.fixture
def server():
    """A python-socketio server with one connected client; its sid."""
    sio = socketio.Server(async_mode="threading")
    sio.eio.sockets["e1"] = engineio.socket.Socket(sio.eio, "e1")
    sio.eio.handlers["connect"]("e1", {"REMOTE_ADDR": "127.0.0.1"})
    sio.eio.handlers["message"]("e1", "0")  # Socket.IO CONNECT, namespace "/"
    sid = sio.manager.sid_from_eio_sid("e1", "/")
    sio.save_session(sid, {"owner": OWNER, "subscriptions": set()})
    return sio, sid


@pytest.fixture
def services(redis_client):
    cfg = config.load(
        {"REDIS_URL": "redis://placeholder:6379/0", "TASKBEAM_NAMESPACE": "t"}, need_secret=False
    )
    return SimpleNamespace(
        store=TaskStore(redis_client, cfg),
        queue_watch=SimpleNamespace(manager=SimpleNamespace(watch_room=lambda room: True)),
        metrics=Metrics(),
    )


def subscribe(server, services, task_id):
    sio, sid = server
    return sockets.on_subscribe(sio, services, sid, {"task_id": task_id, "after": 0})


def test_a_subscribe_joins_the_tasks_room(server, services):
    task = services.store.create(kind="simulate", owner=OWNER, params={})
    assert subscribe(server, services, task["id"])["ok"]
    sio, sid = server
    assert protocol.task_room(task["id"]) in sio.rooms(sid)
    assert sio.get_session(sid)["subscriptions"] == {task["id"]}


def test_a_task_removed_while_subscribing_leaves_no_room_or_subscription(
    server, services, monkeypatch
):
    store = services.store
    task = store.create(kind="simulate", owner=OWNER, params={})
    read = store.record_and_events_page

    def removed_first(task_id, *args):
        store.delete(task_id, OWNER)
        return read(task_id, *args)

    monkeypatch.setattr(store, "record_and_events_page", removed_first)
    ack = subscribe(server, services, task["id"])
    assert ack["error"]["code"] == "not_found"
    sio, sid = server
    assert protocol.task_room(task["id"]) not in sio.rooms(sid)
    assert sio.get_session(sid)["subscriptions"] == set()


def failing_read(store, monkeypatch):
    def read(*args):
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(store, "record_and_events_page", read)


def test_a_redis_error_on_a_first_subscribe_leaves_no_room_or_subscription(
    server, services, monkeypatch
):
    task = services.store.create(kind="simulate", owner=OWNER, params={})
    failing_read(services.store, monkeypatch)
    with pytest.raises(redis.ConnectionError):  # on_error answers `unavailable`
        subscribe(server, services, task["id"])
    sio, sid = server
    assert protocol.task_room(task["id"]) not in sio.rooms(sid)
    assert sio.get_session(sid)["subscriptions"] == set()


def test_a_redis_error_on_a_subscribe_again_keeps_the_subscription(server, services, monkeypatch):
    task = services.store.create(kind="simulate", owner=OWNER, params={})
    assert subscribe(server, services, task["id"])["ok"]
    failing_read(services.store, monkeypatch)
    with pytest.raises(redis.ConnectionError):
        subscribe(server, services, task["id"])  # e.g. for the next page of `missed`
    sio, sid = server
    assert protocol.task_room(task["id"]) in sio.rooms(sid)
    assert sio.get_session(sid)["subscriptions"] == {task["id"]}


@pytest.mark.parametrize("task_id", ["x", "has spaces in it!", "a" * 17, "../../etc/passwd"])
def test_a_malformed_task_id_is_not_found_as_on_rest(server, services, task_id):
    """REST answers 404 `not_found` for an id that cannot be one; so do the socket events."""
    assert subscribe(server, services, task_id)["error"]["code"] == "not_found"
    sio, sid = server
    ack = sockets.on_unsubscribe(sio, services, sid, {"task_id": task_id})
    assert ack["error"]["code"] == "not_found"


@pytest.mark.parametrize("data", [{"task_id": 5}, {"task_id": None}, {}, [1], "x"])
def test_a_task_id_that_is_not_a_string_is_invalid_params(server, services, data):
    sio, sid = server
    assert sockets.on_subscribe(sio, services, sid, data)["error"]["code"] == "invalid_params"

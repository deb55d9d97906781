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
        settings=cfg,
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


def limited_services(services, **env):
    cfg = config.load(
        {"REDIS_URL": "redis://placeholder:6379/0", "TASKBEAM_NAMESPACE": "t", **env},
        need_secret=False,
    )
    return SimpleNamespace(**{**vars(services), "settings": cfg})


def test_subscribes_per_second_are_limited_per_connection(server, services):
    services = limited_services(services, SUBSCRIBE_RATE_PER_S="3")
    task = services.store.create(kind="simulate", owner=OWNER, params={})
    acks = [subscribe(server, services, task["id"]) for _ in range(4)]
    assert [a["ok"] for a in acks] == [True, True, True, False]
    error = acks[3]["error"]
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 1


def test_replayed_bytes_per_second_are_limited_per_connection(server, services):
    services = limited_services(services, SUBSCRIBE_REPLAY_BYTES_PER_S="65536")
    store = services.store
    task = store.create(kind="simulate", owner=OWNER, params={})
    for i in range(300):
        store.append(task["id"], state=protocol.RUNNING, progress=i / 3, message="m" * 400)
    first = subscribe(server, services, task["id"])
    assert first["ok"] and len(first["missed"]) == 301  # one page: ~140 KB, over a second's
    again = subscribe(server, services, task["id"])
    assert again["error"]["code"] == "rate_limited"
    assert 1 < again["error"]["retry_after"] <= 2.5  # until the debt is paid back


def test_subscribes_queued_past_the_sessions_end_log_one_line(server, services, caplog):
    """A slow client's subscribes handled after its session is gone: one log line for
    the connection, not a traceback each (issue 32: 117 tracebacks from one client)."""
    sio, sid = server
    sockets.install(sio, services)
    task = services.store.create(kind="simulate", owner=OWNER, params={})
    sio.disconnect(sid)
    caplog.set_level("DEBUG", logger="taskbeam.web.sockets")
    for _ in range(50):
        sio.handlers["/"]["subscribe"](sid, {"task_id": task["id"], "after": 0})
    mine = [r for r in caplog.records if r.name == "taskbeam.web.sockets"]
    assert len(mine) == 1 and mine[0].exc_info is None, [r.getMessage() for r in mine]


def round_trips(store, monkeypatch):
    """Counts the store's Redis round trips (one connection taken from the pool each)."""
    pool = store.redis.connection_pool
    taken = []
    get_connection = pool.get_connection

    def counted(*args, **kwargs):
        taken.append(1)
        return get_connection(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", counted)
    return taken


def test_a_subscribe_to_a_task_known_here_is_one_redis_round_trip(server, services, monkeypatch):
    task = services.store.create(kind="simulate", owner=OWNER, params={})
    taken = round_trips(services.store, monkeypatch)
    assert subscribe(server, services, task["id"])["ok"]
    first = len(taken)
    sio, _sid = server
    sio.eio.sockets["e2"] = engineio.socket.Socket(sio.eio, "e2")  # another tab of the owner
    sio.eio.handlers["connect"]("e2", {"REMOTE_ADDR": "127.0.0.1"})
    sio.eio.handlers["message"]("e2", "0")
    other = sio.manager.sid_from_eio_sid("e2", "/")
    sio.save_session(other, {"owner": OWNER, "subscriptions": set()})
    assert sockets.on_subscribe(sio, services, other, {"task_id": task["id"], "after": 0})["ok"]
    assert (first, len(taken) - first) == (2, 1)


def test_another_owner_is_not_found_after_the_owner_subscribed(server, services):
    task = services.store.create(kind="simulate", owner=OWNER, params={})
    assert subscribe(server, services, task["id"])["ok"]
    sio, _sid = server
    sio.eio.sockets["e3"] = engineio.socket.Socket(sio.eio, "e3")
    sio.eio.handlers["connect"]("e3", {"REMOTE_ADDR": "127.0.0.1"})
    sio.eio.handlers["message"]("e3", "0")
    stranger = sio.manager.sid_from_eio_sid("e3", "/")
    sio.save_session(stranger, {"owner": "s" * 32, "subscriptions": set()})
    ack = sockets.on_subscribe(sio, services, stranger, {"task_id": task["id"], "after": 0})
    assert ack["error"]["code"] == "not_found"
    assert protocol.task_room(task["id"]) not in sio.rooms(stranger)


def test_the_known_owners_are_bounded(server, services, monkeypatch):
    monkeypatch.setattr(sockets, "MAX_KNOWN_OWNERS", 2)
    monkeypatch.setattr(sockets, "_known_owners", type(sockets._known_owners)())
    for _ in range(3):
        task = services.store.create(kind="simulate", owner=OWNER, params={})
        assert subscribe(server, services, task["id"])["ok"]
    assert list(sockets._known_owners.values()) == [OWNER, OWNER]

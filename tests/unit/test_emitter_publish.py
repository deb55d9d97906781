"""The worker's one-round-trip path (taskbeam/emitter.py, the store's Lua append):
the message the script PUBLISHes is byte for byte what a stock Flask-SocketIO
external emitter (``SocketIO(message_queue=...)``, python-socketio's RedisManager)
publishes for the same event, against the real library and a real Redis; it goes
to the task's room channel, or to the main one while a web reads only that.
"""

import json

import pytest
from flask_socketio import SocketIO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redis as redis_lib
from taskbeam import config, protocol
from taskbeam.emitter import Emitter, StockEnvelope
from taskbeam.store import TaskFinished, TaskStore

CHANNEL = "sio"
# The characters where JSON encoders differ: '/', quotes, backslashes, controls,
# DEL, non-ASCII in two, three and four UTF-8 bytes (the last a surrogate pair).
AWKWARD = 'a/b "q" \\ \n\r\t\b\f \x00\x01\x1f \x7f é ü ẞ € 😀 </script>'


@pytest.fixture
def stock(redis_server):
    """A stock external emitter whose manager talks to the throwaway Redis."""
    socketio = SocketIO(message_queue="redis://unused", channel=CHANNEL)
    # Flask-SocketIO picks RedisManager for redis:// URLs; the test Redis is a Unix socket.
    socketio.server.manager.redis_url = f"unix://{redis_server}"
    return socketio


@pytest.fixture
def store(redis_client):
    cfg = config.load(
        {"REDIS_URL": "redis://placeholder:6379/0", "TASKBEAM_NAMESPACE": "t"}, need_secret=False
    )
    return TaskStore(redis_client, cfg)


class Channel:
    """A subscriber of a message-queue channel that returns the raw bytes."""

    def __init__(self, redis_server, name=CHANNEL):
        self.client = redis_lib.Redis(unix_socket_path=redis_server)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(name)
        self.pubsub.get_message(timeout=5)  # the subscription's confirmation

    def next(self, timeout=5):
        """The next message's bytes (the deadline only bounds a failing test)."""
        message = self.pubsub.get_message(timeout=timeout)
        assert message is not None, "nothing was published"
        return message["data"]

    def quiet(self, timeout=0.2):
        """True if nothing more arrives within ``timeout``."""
        return self.pubsub.get_message(timeout=timeout) is None

    def close(self):
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def main(redis_server):
    """The main channel: stock emitters, and task events while a web reads only it."""
    listening = Channel(redis_server)
    yield listening
    listening.close()


@pytest.fixture
def task(store):
    return running_task(store)


@pytest.fixture
def channel(redis_server, task):
    """The running task's room channel, where the store publishes its events."""
    listening = Channel(redis_server, room_channel(task[0]))
    yield listening
    listening.close()


def room_channel(task_id):
    return protocol.room_channel(CHANNEL, protocol.task_room(task_id))


def running_task(store, message="started"):
    task_id = store.create(kind="simulate", owner="alice", params={})["id"]
    token = store.claim_run(task_id, 60)
    store.append(task_id, token=token, state=protocol.RUNNING, message=message)
    return task_id, token


def stock_bytes(stock, main, event):
    stock.emit(protocol.TASK_UPDATE_EVENT, event, to=protocol.task_room(event["task_id"]))
    return main.next()


PATCHES = [
    {"progress": 12.5, "message": "plain"},
    {"progress": 0.1, "message": AWKWARD},
    {"progress": 40, "message": "counts", "done": 3, "total": 7.5},
    {"progress": 1e-07, "message": "tiny", "done": 20000, "total": 2e16},
    {"state": protocol.SUCCEEDED, "progress": 100, "message": "done", "result": {"k": AWKWARD}},
    {
        "state": protocol.FAILED,
        "message": AWKWARD,
        "error": {"code": "boom", "message": AWKWARD, "n": [1, 2.5, None, True]},
    },
]


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: ",".join(p))
def test_the_in_append_publish_is_the_stock_emitters_message_byte_for_byte(
    store, stock, task, channel, main, patch
):
    task_id, token = task
    event, _ = Emitter(store, stock, store_publishes=True).emit(task_id, token=token, **patch)
    published = channel.next()
    assert main.quiet()  # only web processes holding the room read it
    assert published == stock_bytes(stock, main, event)
    message = json.loads(published)
    assert message["data"] == [event] and message["room"] == protocol.task_room(task_id)
    assert store.events_after(task_id, 0)[-1] == event  # what a resubscribe reads back


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=st.text(max_size=40), progress=st.floats(0, 100), ts=st.floats(0, 4e9))
def test_any_message_text_progress_and_time_give_the_stock_bytes(
    store, stock, main, message, progress, ts
):
    task_id, token = running_task(store, message)
    envelope = StockEnvelope(stock)
    store.redis.set(store.keys.main_only, "1")  # a web reads the main channel only
    event_json = store.append(
        task_id, ts, token=token, publish=envelope.around(task_id), progress=progress
    ).event
    assert main.next() == stock_bytes(stock, main, json.loads(event_json))


def test_each_path_publishes_once_and_a_retry_answered_from_the_log_not_again(
    store, stock, task, channel, main
):
    task_id, token = task
    Emitter(store, stock, store_publishes=False).emit(task_id, token=token, progress=1)
    after = main.next()
    assert main.quiet() and channel.quiet()
    Emitter(store, stock, store_publishes=True).emit(task_id, token=token, progress=2)
    inside = channel.next()
    assert main.quiet() and channel.quiet()
    # Two events, the same envelope: what tells them apart is the event.
    after, inside = json.loads(after), json.loads(inside)
    assert after["data"][0]["seq"] + 1 == inside["data"][0]["seq"]
    assert {**after, "data": None} == {**inside, "data": None}

    publish = StockEnvelope(stock).around(task_id)
    first = store.append(task_id, token=token, emit_id="e1", publish=publish, progress=3)
    again = store.append(task_id, token=token, emit_id="e1", publish=publish, progress=3)
    assert first == again
    channel.next()
    assert channel.quiet()


def test_a_refused_append_publishes_nothing(store, stock, task, channel):
    task_id, token = task
    emitter = Emitter(store, stock, store_publishes=True)
    emitter.emit(task_id, token=token, state=protocol.SUCCEEDED, progress=100, result=1)
    channel.next()
    with pytest.raises(TaskFinished):
        emitter.emit(task_id, token=token, progress=50)
    assert channel.quiet()


def test_while_a_web_reads_only_the_main_channel_the_store_publishes_there(
    store, stock, task, channel, main
):
    """The stock listener (WEB_FAST_TRANSPORT=0) cannot subscribe to room channels:
    while its key is set, every path sends the event to the main channel instead."""
    task_id, token = task
    emitter = Emitter(store, stock, store_publishes=True)
    store.redis.set(store.keys.main_only, "1", ex=15)
    event, _ = emitter.emit(task_id, token=token, progress=5)
    assert main.next() == stock_bytes(stock, main, event) and channel.quiet()
    channel_name, room, head, tail = StockEnvelope(stock).around(task_id)[:4]
    store.publish(channel_name, room, head + json.dumps(event) + tail)
    assert json.loads(main.next())["data"] == [event] and channel.quiet()
    store.redis.delete(store.keys.main_only)  # that web is gone: back to the room's channel
    event, _ = emitter.emit(task_id, token=token, progress=6)
    assert channel.next() == stock_bytes(stock, main, event)


def test_an_emitter_without_the_stock_redis_manager_cannot_publish_in_the_append():
    class NotRedis:
        server = type("S", (), {"manager": object()})()

    with pytest.raises(ValueError):
        Emitter(None, NotRedis(), store_publishes=True)


def test_in_sentinel_mode_the_event_is_published_after_its_wait_not_in_the_append(
    store, stock, task, channel, main, monkeypatch
):
    """An event may be seen only once a replica has it (REDIS_WAIT_REPLICAS): the
    in-append publish would show it before the WAIT. (No replica here: the WAIT's
    count is faked, the script and the publish are real.)"""
    task_id, token = task
    store.wait_replicas = 1
    waits = []

    def script_then_wait(script, keys, args):
        reply = script(keys=keys, args=args)
        waits.append(channel.quiet(0.05))  # nothing published before the WAIT's reply
        return reply, 1

    monkeypatch.setattr(store, "_script_then_wait", script_then_wait)
    event, _ = Emitter(store, stock, store_publishes=True).emit(task_id, token=token, progress=9)
    assert waits == [True]
    assert channel.next() == stock_bytes(stock, main, event)


def test_the_worker_publishes_by_the_store_in_the_append_only_without_replicas_to_wait_for():
    import os

    os.environ.setdefault("REDIS_URL", "redis://placeholder:6379/0")
    from taskbeam import config, worker

    for replicas, in_append in (("0", True), ("1", False)):
        env = {"REDIS_URL": "redis://placeholder:6379/0", "REDIS_WAIT_REPLICAS": replicas}
        runtime = worker.make_runtime(config.load(env, need_secret=False))
        assert runtime.emitter.envelope is not None
        assert runtime.emitter.in_append is in_append

"""The fast transport against the real libraries it reaches into, no fakes: a real
pywsgi server with gevent-websocket's handshake and Gunicorn's handler class, real
python-engineio/python-socketio servers, real WebSocket and Socket.IO clients (in
OS threads, so the server's gevent loop runs meanwhile), a real Redis behind a
proxy that splits its replies. A renamed private attribute upstream fails here.
"""

import functools
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import engineio.socket
import gevent
import gevent.pywsgi
import pytest
import socketio
import websockets.sync.client
from conftest import live_greenlets
from engineio import packet as eio_packet
from flask_socketio import SocketIO
from geventwebsocket.handler import WebSocketHandler
from websockets.exceptions import ConnectionClosed

import redis
from taskbeam import config, protocol
from taskbeam.gunicorn_worker import Handler
from taskbeam.web import fastws, mq_listener
from taskbeam.web.fastws import listener, seams, transport
from taskbeam.web.metrics import Metrics
from taskbeam.web.mq_listener import StockRedisManager, WatchedManager, make_manager


def test_the_installed_libraries_are_the_ones_the_seams_were_read_from():
    assert seams.problems() == []
    assert fastws.libraries_supported()


def in_thread(fn, *args, timeout=10):
    """Run blocking client code in an OS thread while this greenlet lets the
    server's loop run."""
    return gevent.get_hub().threadpool.spawn(fn, *args).get(timeout=timeout)


class Server:
    """python-socketio on pywsgi with the web's Gunicorn handler, as in the image
    (stock: gevent-websocket's own, as gunicorn_worker.StockWorker)."""

    def __init__(self, fast=True, **options):
        self.sio = socketio.Server(async_mode="gevent", max_http_buffer_size=1000, **options)
        if fast:
            fastws.install(self.sio)
        self.sio.on("echo", lambda sid, data: data)
        self.wsgi = gevent.pywsgi.WSGIServer(
            ("127.0.0.1", 0),
            socketio.WSGIApp(self.sio),
            handler_class=Handler if fast else WebSocketHandler,
            log=None,
        )
        self.wsgi.start()
        self.port = self.wsgi.server_port
        self.url = f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket"

    def eio_sockets(self):
        return list(self.sio.eio.sockets.values())

    def deliver(self, room, payload):
        return transport.deliver(
            self.sio.manager,
            {
                "method": "emit",
                "event": "task_update",
                "data": [payload],
                "namespace": "/",
                "room": room,
                "skip_sid": None,
                "callback": None,
            },
        )

    def stop(self):
        for sock in self.eio_sockets():
            if getattr(sock, "direct", None) is not None:
                sock.direct.cut()
        self.wsgi.stop(timeout=1)


@pytest.fixture
def server():
    s = Server(ping_interval=0.3, ping_timeout=5)
    yield s
    s.stop()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.01)


def recv_skipping_pings(ws):
    while (frame := in_thread(ws.recv)) == "2":  # engine.io PING (every 0.3 s here)
        pass
    return frame


def test_a_websocket_is_handed_off_from_pywsgi_and_gets_direct_writes(server):
    in_thread(lambda: None)
    idle = live_greenlets()
    ws = in_thread(lambda: websockets.sync.client.connect(server.url, legacy=True))
    try:
        assert in_thread(ws.recv).startswith("0{")  # engine.io OPEN
        in_thread(ws.send, "40")
        assert in_thread(ws.recv).startswith("40{")  # Socket.IO CONNECT
        (sock,) = server.eio_sockets()
        assert isinstance(sock.direct, transport.Connection)
        # pywsgi's handler ends (a watcher waits); engine.io's service task started.
        wait_for(lambda: len(live_greenlets() - idle) == 1)
        in_thread(ws.send, '421["echo","hi"]')
        assert recv_skipping_pings(ws) == '431["hi"]'
        sid = next(iter(server.sio.manager.rooms["/"][None]))
        server.sio.enter_room(sid, "task:a")
        assert server.deliver("task:a", {"seq": 1}) == 1
        assert json.loads(recv_skipping_pings(ws)[2:]) == ["task_update", {"seq": 1}]
    finally:
        in_thread(ws.close)
    wait_for(lambda: sock.direct is None and not server.eio_sockets())


def closed_by_server(url, send):
    """What a real client sees when the server closes: (code it got, code of our reply)."""
    with websockets.sync.client.connect(url) as ws:
        ws.recv()
        send(ws)
        try:
            while True:
                ws.recv(timeout=5)
        except ConnectionClosed:
            pass
        return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


@pytest.mark.parametrize(
    "send, code",
    [
        (lambda ws: ws.send(b"4\xff\xfe", text=True), 1007),  # invalid UTF-8
        (lambda ws: ws.send("4" + "x" * 2000), 1009),  # over max_http_buffer_size
        (lambda ws: ws.close(1001), 1001),  # the client's own code, echoed
        (lambda ws: ws.close(4000, "bye"), 4000),
    ],
)
def test_close_codes_seen_by_a_real_client(server, send, code):
    assert in_thread(closed_by_server, server.url, send) == code
    wait_for(lambda: not server.eio_sockets())


def test_engineio_pings_on_schedule_and_a_pong_starts_the_next_cycle(server):
    def session():
        with websockets.sync.client.connect(server.url) as ws:
            opened = time.monotonic()
            ws.recv()
            times = []
            for _ in range(2):
                assert ws.recv(timeout=3) == "2"  # engine.io PING
                times.append(time.monotonic() - opened)
                ws.send("3")
            return times

    first, second = in_thread(session)
    # Never early; the upper bound leaves room for a loaded machine (the timeout is 5 s).
    assert 0.25 <= first < 1.5 and 0.25 <= second - first < 1.5


def test_a_client_upgrading_from_long_polling_keeps_engineios_handler_with_direct_writes(server):
    client = socketio.Client(reconnection=False)
    received = []
    client.on("task_update", received.append)

    def connect():
        client.connect(
            f"http://127.0.0.1:{server.port}", transports=["polling", "websocket"], wait_timeout=5
        )
        deadline = time.monotonic() + 5
        while client.transport() != "websocket":
            assert time.monotonic() < deadline
            time.sleep(0.01)

    in_thread(connect)
    try:
        (sock,) = server.eio_sockets()
        wait_for(lambda: seams.upgraded(sock) and sock.direct is not None)
        assert isinstance(sock.direct, transport.UpgradedWebSocket)
        sid = next(iter(server.sio.manager.rooms["/"][None]))
        server.sio.enter_room(sid, "task:a")
        assert server.deliver("task:a", {"seq": 7}) == 1
        wait_for(lambda: received == [{"seq": 7}])
    finally:
        in_thread(client.disconnect)


# The message-queue listeners against a real Redis, through a proxy that hands
# each reply to the listener a few bytes at a time.


class SplittingProxy:
    """A Unix-socket proxy to Redis; Redis's bytes go on in ``piece``-byte writes."""

    def __init__(self, target, path, piece=5):
        self.target, self.path, self.piece = target, path, piece
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        self.live, self.sockets, self.threads = [], [], []
        self.spawn(self.accept)

    def spawn(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.socket(socket.AF_UNIX)
            self.sockets += [client, upstream]
            upstream.connect(self.target)
            self.live.append((client, upstream))
            self.spawn(self.pump, client, upstream, 65536)
            self.spawn(self.pump, upstream, client, self.piece)

    @staticmethod
    def pump(source, sink, piece):
        try:
            while data := source.recv(65536):
                for i in range(0, len(data), piece):
                    sink.sendall(data[i : i + piece])
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_connections(self):
        live, self.live = self.live, []
        for pair in live:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.drop_connections()
        for thread in self.threads:
            thread.join(5)
        for s in self.sockets:
            s.close()


@pytest.fixture
def proxy(redis_server, tmp_path):
    p = SplittingProxy(redis_server, str(tmp_path / "proxy.sock"))
    yield p
    p.close()


def thread_wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_fast_listener_reads_replies_split_across_reads_and_resubscribes(proxy, redis_client):
    manager = listener.FastRedisManager(f"unix://{proxy.path}", "sio", Metrics())
    resubscribed = threading.Event()
    manager.on_resubscribed = resubscribed.set
    got = []
    big = "é" * (listener.READ_BYTES + 1000)  # longer than one read too

    def listen():
        messages = manager.listen()
        for message in messages:
            got.append(message)
            if message == "stop":
                messages.close()  # disconnects
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    thread_wait(lambda: redis_client.pubsub_numsub("sio")[0][1] == 1)
    sent = ["a", big, '{"method": "emit"}', "b" * 300]
    for message in sent:
        redis_client.publish("sio", message)
    thread_wait(lambda: len(got) == len(sent))
    assert got == sent
    proxy.drop_connections()  # the subscription is lost; the listener comes back
    thread_wait(resubscribed.is_set)
    thread_wait(lambda: redis_client.pubsub_numsub("sio")[0][1] == 1)
    redis_client.publish("sio", "stop")
    thread.join(10)
    assert got[-1] == "stop"


def numsub(client, channel):
    return client.pubsub_numsub(channel)[0][1]


def listening(manager):
    """The listener's messages, gathered by a thread, as the list it fills."""
    got = []

    def listen():
        for message in manager.listen():
            got.append(message)

    threading.Thread(target=listen, daemon=True).start()
    return got


def test_the_fast_listener_reads_the_rooms_it_holds_and_lets_go_of_idle_ones(proxy, redis_client):
    """Per-room channels (the store publishes task events there): a room's channel is
    on the subscription once watch_room returns, gone once no socket holds the room,
    and back with the subscription after a lost connection."""
    manager = listener.FastRedisManager(f"unix://{proxy.path}", "sio", Metrics())
    socketio.Server(async_mode="threading", client_manager=manager)  # its listener not started
    resubscribed = threading.Event()
    manager.on_resubscribed = resubscribed.set
    room_a, room_b = "sio#task:a", "sio#task:b"
    s1, s2 = manager.connect("e1", "/"), manager.connect("e2", "/")
    early = []  # a subscribe before the listener has a connection waits for it
    waiting = threading.Thread(target=lambda: early.append(manager.watch_room("task:b")))
    manager.enter_room(s2, "/", "task:b", "e2")
    waiting.start()
    got = listening(manager)
    waiting.join(10)
    assert early == [True] and numsub(redis_client, room_b) == 1
    redis_client.publish(room_a, "nobody here holds task:a")
    manager.enter_room(s1, "/", "task:a", "e1")
    assert manager.watch_room("task:a")
    assert numsub(redis_client, room_a) == 1 and numsub(redis_client, "sio") == 1
    for channel, message in (("sio", "main"), (room_a, "a"), (room_b, "b")):
        redis_client.publish(channel, message)
    thread_wait(lambda: len(got) == 3)
    assert got == ["main", "a", "b"]
    assert manager.forget_idle_rooms() == 0  # both rooms are held
    manager.leave_room(s1, "/", "task:a")
    assert manager.forget_idle_rooms() == 1
    thread_wait(lambda: numsub(redis_client, room_a) == 0)
    assert numsub(redis_client, room_b) == 1
    proxy.drop_connections()
    thread_wait(resubscribed.is_set)
    thread_wait(lambda: numsub(redis_client, room_b) == 1)
    assert manager.watch_room("task:b", timeout_s=5)
    redis_client.publish(room_b, "b again")
    thread_wait(lambda: got[-1:] == ["b again"])
    assert numsub(redis_client, room_a) == 0


def test_a_room_is_refused_while_the_listener_cannot_subscribe():
    manager = listener.FastRedisManager("redis://127.0.0.1:9", "sio", Metrics())  # nothing there
    assert manager.watch_room("task:a", timeout_s=0.2) is False


@pytest.mark.parametrize("kind", ["fast", "stock"])
def test_a_web_reading_the_main_channel_only_keeps_the_store_publishing_there(
    kind, redis_server, redis_client
):
    """The stock listener cannot subscribe to room channels: its heartbeat sets, first,
    the key that sends task events to the main channel (TaskStore.keys.main_only), for
    longer than it takes QueueWatch to notice a deaf listener; the fast one does not."""
    url = f"unix://{redis_server}"
    manager = (
        listener.FastRedisManager(url, "sio", Metrics())
        if kind == "fast"
        else StockRedisManager(url, "sio", Metrics())
    )
    watch = mq_listener.QueueWatch(None, manager, redis_client, "t:socketio:main-only")
    redis_client.delete("t:socketio:main-only")
    watch.publish_heartbeat()
    ttl = redis_client.ttl("t:socketio:main-only")
    if kind == "fast":
        assert ttl == -2  # no such key
    else:
        assert watch.stale_after_s < ttl <= watch.main_only_ttl_s


def heartbeat_and_resubscription(kind, redis_path, tmp):
    """Run in a process of its own (``python -c``): python-socketio's listener thread
    runs forever, and must not outlive the test."""
    proxy = SplittingProxy(redis_path, f"{tmp}/proxy.sock")
    client = redis.Redis(unix_socket_path=redis_path)
    url, metrics = f"unix://{proxy.path}", Metrics()
    manager = (
        listener.FastRedisManager(url, "sio", metrics)
        if kind == "fast"
        else StockRedisManager(url, "sio", metrics)
    )
    resubscribed = threading.Event()
    manager.on_resubscribed = resubscribed.set
    # python-socketio runs the listener (its _thread) in a background task: here a thread.
    socketio.Server(async_mode="threading", client_manager=manager)
    manager.initialize()
    thread_wait(lambda: client.pubsub_numsub("sio")[0][1] == 1)
    time.sleep(0.1)
    manager.last_heard = 0.0  # the fast listener counts any read, its subscription's too
    client.publish("sio", manager.heartbeat_message())
    thread_wait(lambda: manager.heard_within(5))
    assert not resubscribed.is_set()
    proxy.drop_connections()
    thread_wait(resubscribed.is_set, timeout=15)
    manager.last_heard = 0.0
    # As QueueWatch does: a heartbeat every interval until one is heard.
    thread_wait(
        lambda: (
            client.publish("sio", manager.heartbeat_message()) is None
            or manager.heard_within(5)
            or time.sleep(0.2)
        )
    )
    print("heard and resubscribed", flush=True)  # os._exit does not flush a pipe
    os._exit(0)  # the listener thread never ends


@pytest.mark.parametrize("kind", ["fast", "stock"])
def test_either_listener_hears_its_heartbeat_and_reports_a_resubscription(
    kind, redis_server, tmp_path
):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_fastws_contract as t; "
        "t.heartbeat_and_resubscription(*sys.argv[2:])"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            os.path.dirname(__file__),
            kind,
            redis_server,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "heard and resubscribed\n", done.stderr[-3000:]


def test_a_long_polling_socket_past_its_queue_bound_is_closed_by_engineio(monkeypatch):
    monkeypatch.setattr(transport, "MAX_QUEUED_PACKETS", 5)
    sio = socketio.Server(async_mode="gevent")
    fastws.install(sio)
    sock = sio.eio.sockets["a"] = engineio.socket.Socket(sio.eio, "a")
    sio.eio.handlers["connect"]("a", {"REMOTE_ADDR": "127.0.0.1"})
    for _ in range(6):  # a long-polling client that stopped polling
        sock.send(eio_packet.Packet(eio_packet.MESSAGE, "x"))
    wait_for(lambda: sock.closed)


# The switch.


def settings_with(**env):
    return config.load({"REDIS_URL": "redis://redis:6379/0", **env}, need_secret=False)


@pytest.fixture
def fresh_check():
    fastws.libraries_supported.cache_clear()
    yield
    fastws.libraries_supported.cache_clear()


def test_libraries_other_than_the_seams_were_read_from_mean_stock_and_one_warning(
    fresh_check, monkeypatch, caplog
):
    monkeypatch.setitem(seams.READ_FROM, "python-engineio", "4.14.0")
    assert not fastws.in_use(settings_with())
    assert not fastws.in_use(settings_with())
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "python-engineio 4.15.1 (read from 4.14.0)" in warnings[0].message
    manager = make_manager("redis://unused", "sio", Metrics(), fast=fastws.in_use(settings_with()))
    assert isinstance(manager, StockRedisManager)


def test_a_message_layout_other_than_python_socketios_means_stock(fresh_check, monkeypatch):
    """The worker writes protocol.mq_emit_message and the fast listener cuts task events
    out of it: if the installed python-socketio writes anything else, the web runs stock."""
    monkeypatch.setattr(protocol, "MQ_JSON_SEPARATORS", (",", ":"))
    assert "socketio PubSubManager.emit's message (protocol.mq_emit_message)" in seams.problems()
    assert not fastws.in_use(settings_with())


def test_web_fast_transport_0_means_stock(fresh_check):
    for env, kind in (({"WEB_FAST_TRANSPORT": "0"}, "stock"), ({}, "fast")):
        fast = fastws.in_use(settings_with(**env))
        manager = make_manager("redis://unused", "sio", Metrics(), fast=fast)
        assert fast is (kind == "fast")
        if kind == "fast":
            assert isinstance(manager, listener.FastRedisManager)
        else:
            assert type(manager).__mro__[1:3] == (WatchedManager, socketio.RedisManager)


# python-socketio's client leaves the socket of a dropped connection to the GC.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fast", [True, False])
def test_clients_reconnect_by_themselves_after_a_deaf_listener_drops_them(fast):
    """QueueWatch drops every client when the listener goes silent: a real client
    must come back on its own (a Socket.IO server-side disconnect would stop it)."""
    server = Server(fast=fast, ping_interval=5, ping_timeout=5)
    client = socketio.Client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.2)
    connects = []
    client.on("connect", lambda: connects.append(time.monotonic()))
    in_thread(lambda: client.connect(f"http://127.0.0.1:{server.port}", transports=["websocket"]))
    try:
        wait_for(lambda: len(connects) == 1)
        watch = mq_listener.QueueWatch(
            SimpleNamespace(server=server.sio), server.sio.manager, None, "unused"
        )
        watch.close_connections()
        wait_for(lambda: len(connects) == 2, timeout=10)
    finally:
        in_thread(client.disconnect)
        server.stop()
        gc.collect()  # here, where its warning is expected


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fast", [True, False])
def test_a_listener_back_drops_only_the_clients_connected_before_it(fast):
    """Once its subscription is back, QueueWatch closes the connections that may have
    missed events; a client that connected after that (one reconnecting at the time)
    read the stored log since, and is not sent away again."""
    server = Server(fast=fast, ping_interval=5, ping_timeout=5)
    url = f"http://127.0.0.1:{server.port}"
    clients, connects = {}, {"before": [], "after": []}
    for name in connects:
        clients[name] = socketio.Client(
            reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.2
        )
        clients[name].on("connect", functools.partial(connects[name].append, 1))
    tasks = []
    watch = mq_listener.QueueWatch(
        SimpleNamespace(server=server.sio, start_background_task=lambda *a: tasks.append(a)),
        server.sio.manager,
        None,
        "unused",
    )
    in_thread(lambda: clients["before"].connect(url, transports=["websocket"]))
    try:
        wait_for(lambda: connects["before"] == [1])
        watch.resubscribed()  # the closing itself runs later, as a background task
        in_thread(lambda: clients["after"].connect(url, transports=["websocket"]))
        wait_for(lambda: connects["after"] == [1])
        (task,) = tasks
        task[0](*task[1:])
        wait_for(lambda: connects["before"] == [1, 1], timeout=10)
        assert connects["after"] == [1] and clients["after"].connected
    finally:
        for client in clients.values():
            in_thread(client.disconnect)
        server.stop()
        gc.collect()  # here, where its warning is expected


class RoomsScanned(dict):
    """A namespace's rooms that refuse to be scanned (copied or iterated)."""

    def copy(self):
        raise AssertionError("every room scanned")

    def items(self):
        raise AssertionError("every room scanned")


def rooms_after(manager, clients=50):
    """Clients connect, join rooms (shared and their own), one room is closed and
    half the clients disconnect: the manager's rooms, callbacks and pending lists."""
    sids = [manager.pre_connect(f"eio{i}", "/") for i in range(clients)]
    for i, sid in enumerate(sids):
        manager.connect(sid, "/")
        manager.basic_enter_room(sid, "/", f"task:{i % 7}")
        manager.basic_enter_room(sid, "/", "everyone")
        manager._generate_ack_id(sid, print)
    manager.basic_close_room("task:3", "/")
    manager.basic_leave_room(sids[0], "/", "everyone")
    manager.pre_disconnect(sids[1], "/")
    pending = manager.pre_connect("eio-pending", "/")
    for sid in sids[: clients // 2] + [pending]:
        manager.disconnect(sid, "/", ignore_queue=True)
    rooms = {room: dict(members) for room, members in manager.rooms["/"].items()}
    kept = {sid: sorted(map(str, manager.get_rooms(sid, "/"))) for sid in sids[clients // 2 :]}
    return rooms, set(manager.callbacks), manager.pending_connect, manager.pending_disconnect, kept


def test_the_fast_manager_keeps_python_socketios_rooms_and_disconnects_without_a_scan():
    fast = listener.FastRedisManager("redis://127.0.0.1:9", "sio", Metrics())
    stock = socketio.RedisManager("redis://127.0.0.1:9", channel="sio")
    for manager in (fast, stock):
        manager.set_server(socketio.Server(async_mode="threading"))
        manager.server.eio.generate_id = iter(range(10_000)).__next__  # the same sids in both
    assert rooms_after(fast) == rooms_after(stock)
    assert fast.sid_rooms["/"].keys() == {s for s in fast.rooms["/"][None]}

    # 1,000 clients in rooms of their own: one leaving touches its own rooms only.
    sids = [fast.pre_connect(f"many{i}", "/") for i in range(1000)]
    fast.rooms["/"] = RoomsScanned(fast.rooms["/"])
    for sid in sids:
        fast.connect(sid, "/")
        fast.basic_enter_room(sid, "/", f"own:{sid}")
    assert set(fast.get_rooms(sids[0], "/")) == {sids[0], f"own:{sids[0]}"}
    for sid in sids:
        fast.disconnect(sid, "/", ignore_queue=True)
    assert not any(str(room).startswith("own:") for room in dict.keys(fast.rooms["/"]))


# Task events framed from their message's own bytes.

AWKWARD = 'a/b "q" \\ \n\r\t\b\f \x00\x1f \x7f é € 😀 </script> ], "binary": false, "room": "x'


def stock_messages(redis_server, emits):
    """What a stock Flask-SocketIO external emitter publishes for ``emits``, each
    ``(event name, data, to)``, read raw from a real Redis; and its host id."""
    emitter = SocketIO(message_queue="redis://unused", channel="sio")
    emitter.server.manager.redis_url = f"unix://{redis_server}"  # a Unix socket here
    subscriber = redis.Redis(unix_socket_path=redis_server).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe("sio")
    subscriber.get_message(timeout=5)
    for name, data, to in emits:
        emitter.emit(name, data, to=to)
    messages = [subscriber.get_message(timeout=5)["data"].decode() for _ in emits]
    subscriber.close()
    emitter.server.manager.redis.close()
    return messages, emitter.server.manager.host_id


EVENTS = [
    {"task_id": "a" * 32, "seq": 1, "state": "running", "progress": 12.5, "ts": 1796082662.5},
    {"task_id": "b" * 32, "seq": 2, "message": AWKWARD, "ts": 1.5e9, "result": {"url": "/x"}},
    {"ts": -1, "nested": [{"ts": "not this one"}], "empty": {}},
    {"task_id": "c" * 32, "seq": 3},  # no ts: delivered, no lag known
]


def test_a_task_event_from_the_stock_emitter_is_framed_as_its_parsed_form_would_be(redis_server):
    messages, host_id = stock_messages(
        redis_server, [("task_update", event, f"task:{i}") for i, event in enumerate(EVENTS)]
    )
    for i, (message, event) in enumerate(zip(messages, EVENTS)):
        cut = listener.cut_task_event(message)
        assert cut is not None, message
        parsed = json.loads(message)  # what python-socketio's listener reads
        assert {k: parsed[k] for k in ("method", "event", "namespace", "room", "host_id")} == cut
        assert cut["room"] == f"task:{i}" and cut["host_id"] == host_id
        assert cut.packet[0] == "2" and json.loads(cut.packet[1:]) == ["task_update", event]
        assert (float(cut.ts) if cut.ts else None) == event.get("ts")


def test_messages_in_any_other_form_are_left_to_python_socketio(redis_server):
    event = EVENTS[0]
    messages, _ = stock_messages(
        redis_server,
        [
            ("other_event", event, "task:1"),
            ("task_update", event, None),  # to everyone
            ("task_update", [event], "task:1"),
            ("task_update", None, "task:1"),
            ("task_update", 'a "string"', "task:1"),
            ("task_update", event, 'task:"quoted"'),
        ],
    )
    (plain,), _ = stock_messages(redis_server, [("task_update", event, "task:1")])
    messages += [
        plain.replace('"skip_sid": null', '"skip_sid": "abc"'),
        plain.replace('"callback": null', '"callback": ["task:1", "/", 1]'),
        plain.replace('"binary": false', '"binary": true'),
        plain.replace('"namespace": "/"', '"namespace": "/other"'),
        plain + " ",
        plain[:-1],
        '{"method": "emit", "event": "task_update", "data": [{"seq": 1}]}',
    ]
    assert [listener.cut_task_event(m) for m in messages] == [None] * len(messages)
    assert listener.cut_task_event(plain) is not None


def test_a_cut_task_event_reaches_a_real_client_and_the_metrics(server, redis_server):
    (message,), _ = stock_messages(redis_server, [("task_update", EVENTS[1], "task:a")])
    ws = in_thread(lambda: websockets.sync.client.connect(server.url, legacy=True))
    try:
        assert in_thread(ws.recv).startswith("0{")
        in_thread(ws.send, "40")
        assert in_thread(ws.recv).startswith("40{")
        sid = next(iter(server.sio.manager.rooms["/"][None]))
        server.sio.enter_room(sid, "task:a")
        manager = SimpleNamespace(
            server=server.sio,
            get_participants=server.sio.manager.get_participants,
            metrics=Metrics(),
        )
        assert listener.FastRedisManager.handle_emit(manager, listener.cut_task_event(message))
        assert json.loads(recv_skipping_pings(ws)[2:]) == ["task_update", EVENTS[1]]
        assert (manager.metrics.events_received, manager.metrics.events_delivered) == (1, 1)
        assert manager.metrics.lag_last > 0  # from the event's ts (2017)
    finally:
        in_thread(ws.close)


def test_before_its_connect_is_accepted_a_real_socket_may_send_64_kib_only():
    """An unauthenticated socket held ~1 MiB in an unfinished message (issue 32)."""
    s = Server()
    s.sio.eio.max_http_buffer_size = 1 << 20
    try:
        big = '421["echo","' + "x" * (64 * 1024) + '"]'
        refused = in_thread(closed_by_server, s.url, lambda ws: ws.send(big))
        assert refused == 1009
        wait_for(lambda: not s.eio_sockets())

        def connected_then_big(ws):
            ws.send("40")
            assert ws.recv(timeout=5).startswith("40{")
            ws.send(big)
            while (reply := ws.recv(timeout=5)) == "2":
                pass
            return reply

        with in_thread(websockets.sync.client.connect, s.url) as ws:
            in_thread(ws.recv)
            assert in_thread(connected_then_big, ws).startswith('431["x')
        wait_for(lambda: not s.eio_sockets())
    finally:
        s.stop()

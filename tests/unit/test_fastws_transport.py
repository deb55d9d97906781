"""The fast transport (taskbeam.web.fastws.transport): frames, addressing, when it
must queue, the connection after hand-off, its close codes and its bounds."""

import json
import logging
import time
import types

import gevent
import gevent.pool
import gevent.socket
import pytest
from conftest import client_frame, live_greenlets
from engineio import packet as eio_packet
from geventwebsocket.websocket import Header, Stream, WebSocket

from taskbeam.web import MAX_BODY_BYTES
from taskbeam.web.fastws import codec, transport


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_matches_gevent_websocket_header(size):
    payload = b"x" * size
    header = Header.encode_header(True, WebSocket.OPCODE_TEXT, b"", size, 0)
    assert codec.text_frame(payload) == bytes(header) + payload


class FakeQueue(list):
    @property
    def items(self):
        return list(self)

    def empty(self):
        return not self

    def put(self, item):
        self.append(item)


class FakeRawSocket:
    """Accepts up to ``room`` bytes per send, then would block."""

    def __init__(self, room=1 << 20):
        self.room, self.sent = room, b""

    def send(self, data, flags, timeout):
        assert timeout == 0.0, "a direct write must never wait"
        if not self.room:
            raise BlockingIOError
        taken = data[: self.room]
        self.room -= len(taken)
        self.sent += taken
        return len(taken)


class FakeEioSocket:
    def __init__(self, raw):
        self.upgraded, self.closed, self.queue = True, False, FakeQueue()
        ws = transport.UpgradedWebSocket.__new__(transport.UpgradedWebSocket)
        ws.eio_socket = self
        ws._sock = type("GeventWS", (), {})()
        ws._sock.stream = type("Stream", (), {})()
        ws._sock.stream.handler = type("Handler", (), {"socket": raw})()
        self.direct = ws


class FakeServer:
    from socketio.packet import Packet as packet_class

    def __init__(self, sockets):
        self.eio = type("Eio", (), {"sockets": sockets})()
        self.queued = []

    def _send_eio_packet(self, eio_sid, pkt):
        self.queued.append((eio_sid, pkt.encode()))


class FakeManager:
    def __init__(self, rooms, sockets):
        self.rooms, self.server = rooms, FakeServer(sockets)

    def get_participants(self, namespace, room):
        return list(self.rooms[namespace].get(room, {}).items())


def message(**overrides):
    msg = {
        "method": "emit",
        "event": "task_update",
        "data": [{"seq": 1}],
        "namespace": "/",
        "room": "task:a",
        "skip_sid": None,
        "callback": None,
    }
    msg.update(overrides)
    return msg


def wire(event_json):
    return codec.text_frame(("42" + event_json).encode())


def test_idle_sockets_get_the_frame_written_directly_and_others_in_the_room_too():
    raws = {"e1": FakeRawSocket(), "e2": FakeRawSocket()}
    sockets = {sid: FakeEioSocket(raw) for sid, raw in raws.items()}
    manager = FakeManager({"/": {"task:a": {"s1": "e1", "s2": "e2"}}}, sockets)
    assert transport.deliver(manager, message()) == 2
    expected = wire(json.dumps(["task_update", {"seq": 1}], separators=(",", ":")))
    assert raws["e1"].sent == raws["e2"].sent == expected
    assert manager.server.queued == []


def test_a_socket_with_queued_packets_or_a_write_in_progress_gets_queued_in_order():
    raw_busy, raw_backlog = FakeRawSocket(), FakeRawSocket()
    busy, backlog = FakeEioSocket(raw_busy), FakeEioSocket(raw_backlog)
    busy.direct.writing = True
    backlog.queue.put("earlier packet")
    manager = FakeManager({"/": {"task:a": {"s1": "e1", "s2": "e2"}}}, {"e1": busy, "e2": backlog})
    transport.deliver(manager, message())
    assert raw_busy.sent == raw_backlog.sent == b""
    assert [sid for sid, _ in manager.server.queued] == ["e1", "e2"]
    assert manager.server.queued[0][1] == '42["task_update",{"seq":1}]'


def test_a_full_socket_buffer_queues_the_whole_frame_and_a_partial_write_queues_the_rest():
    full, partial = FakeRawSocket(room=0), FakeRawSocket(room=5)
    manager = FakeManager(
        {"/": {"task:a": {"s1": "e1", "s2": "e2"}}},
        {"e1": FakeEioSocket(full), "e2": FakeEioSocket(partial)},
    )
    transport.deliver(manager, message())
    frame = wire('["task_update",{"seq":1}]')
    assert [sid for sid, _ in manager.server.queued] == ["e1"]
    tail = manager.server.eio.sockets["e2"].queue  # the unsent rest, for the writer
    assert len(tail) == 1 and partial.sent + tail[0].encode().data == frame


def test_skip_sid_and_other_rooms_are_left_out():
    raws = {"e1": FakeRawSocket(), "e2": FakeRawSocket(), "e3": FakeRawSocket()}
    manager = FakeManager(
        {"/": {"task:a": {"s1": "e1", "s2": "e2"}, "task:b": {"s3": "e3"}}},
        {sid: FakeEioSocket(raw) for sid, raw in raws.items()},
    )
    transport.deliver(manager, message(skip_sid="s1"))
    assert (bool(raws["e1"].sent), bool(raws["e2"].sent), bool(raws["e3"].sent)) == (
        False,
        True,
        False,
    )


def test_callbacks_and_binary_are_left_to_python_socketio():
    manager = FakeManager({"/": {}}, {})
    assert transport.deliver(manager, message(callback=["s", "/", 1])) is None
    assert transport.deliver(manager, message(binary=True)) is None


@pytest.mark.parametrize(
    "data, args",
    [
        ([{"a": 1}], [{"a": 1}]),
        ([1, 2], [1, 2]),
        ([None], []),
        ("text", ["text"]),
    ],
)
def test_arguments_are_spread_like_python_socketio(data, args):
    raw = FakeRawSocket()
    manager = FakeManager({"/": {"task:a": {"s1": "e1"}}}, {"e1": FakeEioSocket(raw)})
    transport.deliver(manager, message(data=data))
    assert raw.sent == wire(json.dumps(["task_update", *args], separators=(",", ":")))


def test_other_namespaces_are_addressed_in_the_packet():
    raw = FakeRawSocket()
    manager = FakeManager({"/admin": {"task:a": {"s1": "e1"}}}, {"e1": FakeEioSocket(raw)})
    transport.deliver(manager, message(namespace="/admin"))
    assert raw.sent == codec.text_frame(b'42/admin,["task_update",{"seq":1}]')


# The writer on demand: the Drainer (engine.io's writer without a greenlet
# waiting on the queue).


class FakeWebSocket:
    """The wrapper engine.io reads and writes: ``wait()`` hands out ``incoming``."""

    def __init__(self, incoming=(), broken=False):
        self.incoming, self.broken = list(incoming), broken
        self.sent, self.closed = [], False

    def send(self, message):
        if self.broken:
            raise OSError("connection reset")
        self.sent.append(message)

    def wait(self):
        gevent.sleep(0)  # a read lets other greenlets run, as a socket read does
        return self.incoming.pop(0) if self.incoming else None

    def close(self):
        self.closed = True

    def close_later(self):
        pass


class FakeEioServer:
    max_http_buffer_size = 100
    reason = type("Reason", (), {"TRANSPORT_CLOSE": "transport close"})

    def __init__(self):
        quiet = staticmethod(lambda *args, **kwargs: None)
        self.logger = type("Logger", (), {"info": quiet, "exception": quiet})()


class QueuedEioSocket:
    """An engine.io socket as the Drainer and Connection use it: a WakingQueue,
    receive and close."""

    def __init__(self):
        self.server, self.sid = FakeEioServer(), "e1"
        self.queue = transport.WakingQueue()
        self.connected = self.upgraded = self.closed = False
        self.received, self.close_calls = [], []

    def send(self, data):
        self.queue.put(eio_packet.Packet(eio_packet.MESSAGE, data))

    def receive(self, pkt):
        self.received.append(pkt.data)
        self.send(f"ack {pkt.data}")

    def close(self, wait=True, abort=False, reason=None):
        self.close_calls.append((wait, abort, reason))
        self.closed = True
        self.queue.put(None)  # as engine.io's Socket.close() does


def drained(drainer):
    if drainer.greenlet is not None:
        drainer.greenlet.join()


def test_the_drainer_sends_what_is_queued_in_order_and_then_holds_no_greenlet():
    sock, ws = QueuedEioSocket(), FakeWebSocket()
    drainer = transport.Drainer(sock, ws)
    sock.queue.on_put = drainer.wake
    gevent.get_hub()
    idle = live_greenlets()
    sock.send("a")
    sock.send("b")
    drained(drainer)
    assert ws.sent == ["4a", "4b"]
    assert drainer.greenlet is None and not live_greenlets() - idle
    sock.send("c")  # woken again by the next packet
    drained(drainer)
    assert ws.sent == ["4a", "4b", "4c"]


def test_the_end_closes_the_websocket_and_later_packets_only_keep_join_from_waiting():
    sock, ws = QueuedEioSocket(), FakeWebSocket()
    drainer = transport.Drainer(sock, ws)
    sock.queue.on_put = drainer.wake
    sock.send("last")
    sock.queue.put(None)
    sock.send("too late")
    drained(drainer)
    assert ws.sent == ["4last"] and ws.closed
    with gevent.Timeout(2):
        sock.queue.join()


def test_a_broken_connection_ends_the_drainer_without_leaving_packets_behind():
    sock, ws = QueuedEioSocket(), FakeWebSocket(broken=True)
    drainer = transport.Drainer(sock, ws)
    sock.queue.on_put = drainer.wake
    sock.send("a")
    sock.send("b")
    drained(drainer)
    assert ws.closed and sock.queue.empty()


# The Connection: a WebSocket after the handshake, read by a watcher, on a real
# socket pair (the test is the client: its frames are masked, as RFC 6455 wants).


def server_frames(data):
    """(opcode, payload) of the unmasked frames the server sent."""
    frames, pos = [], 0
    while pos < len(data):
        size, head = data[pos + 1] & 0x7F, pos + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size, head = int.from_bytes(data[head : head + width], "big"), head + width
        frames.append((data[pos] & 0x0F, data[head : head + size]))
        pos = head + size
    return frames


class Connected:
    """A Connection on one end of a socket pair; the test holds the client end."""

    def __init__(self):
        self.sock = QueuedEioSocket()
        self.sock.server.sockets = {self.sock.sid: self.sock}
        self.sock.send("open")  # engine.io queues OPEN before the handshake ends
        server_side, self.client = gevent.socket.socketpair()
        self.open_before = transport.Connection.open_count
        self.connection = transport.Connection(self.sock, server_side)
        self.received = b""

    def send(self, data):
        self.client.sendall(data)

    def frames_until(self, count):
        with gevent.Timeout(2):
            while len(server_frames(self.received)) < count:
                chunk = self.client.recv(65536)
                if not chunk:
                    break
                self.received += chunk
        return server_frames(self.received)

    def wait_closed(self):
        with gevent.Timeout(2):
            while not self.connection.closed:
                gevent.sleep(0.005)
        if self.client.fileno() < 0:
            return None
        self.client.settimeout(2)
        while chunk := self.client.recv(65536):
            self.received += chunk
        return server_frames(self.received)


def test_a_connection_sends_open_first_answers_messages_and_pings_and_ends_when_the_client_closes():
    c = Connected()
    assert c.sock.connected and c.sock.upgraded and c.sock.direct is c.connection
    assert c.frames_until(1) == [(codec.OP_TEXT, b"4open")]
    c.send(client_frame(codec.OP_TEXT, b"4hello") + client_frame(codec.OP_PING, b"p"))
    c.send(
        client_frame(codec.OP_TEXT, b"4wor", fin=False)
        + client_frame(codec.OP_CONTINUATION, "ld \u00e9".encode())
    )
    assert c.frames_until(4)[1:] == [
        (codec.OP_TEXT, b"4ack hello"),
        (codec.OP_PONG, b"p"),
        (codec.OP_TEXT, "4ack world \u00e9".encode()),
    ]
    assert c.sock.received == ["hello", "world \u00e9"]
    c.client.shutdown(gevent.socket.SHUT_WR)  # the client goes away
    assert c.wait_closed()[-1][0] == codec.OP_CLOSE
    assert c.sock.close_calls == [(False, True, "transport close")]
    assert c.sock.server.sockets == {} and c.sock.direct is None
    assert transport.Connection.open_count == c.open_before
    c.client.close()


def test_what_engineio_sends_to_an_idle_connection_is_written_without_a_greenlet(monkeypatch):
    c = Connected()
    assert c.frames_until(1) == [(codec.OP_TEXT, b"4open")]
    with gevent.Timeout(2):
        while c.connection.writing or c.sock.queue.items or c.connection.reader:
            gevent.sleep(0.005)
    spawned = []
    monkeypatch.setattr(gevent, "spawn", lambda *args, **kwargs: spawned.append(args))
    c.sock.send("ack")  # an acknowledgement, a ping: engine.io's Socket.send
    assert spawned == [] and c.sock.queue.unfinished == 0
    assert c.frames_until(2)[1] == (codec.OP_TEXT, b"4ack")
    monkeypatch.undo()
    c.client.close()
    c.wait_closed()


def test_a_close_frame_from_the_client_ends_the_connection():
    c = Connected()
    c.send(client_frame(codec.OP_CLOSE, (1000).to_bytes(2, "big")))
    c.wait_closed()
    assert c.sock.closed and c.sock.close_calls == [(False, True, "transport close")]
    c.client.close()


@pytest.mark.parametrize(
    "data",
    [
        client_frame(codec.OP_TEXT, b"4" + b"x" * 200),  # over the limit
        client_frame(codec.OP_TEXT, b"4" + b"x" * 60, fin=False)
        + client_frame(codec.OP_CONTINUATION, b"x" * 60),  # fragments over it
        client_frame(codec.OP_TEXT, b"4hi", masked=False),  # unmasked
        client_frame(codec.OP_TEXT, b"\xff\xfe"),  # not UTF-8
        client_frame(codec.OP_CONTINUATION, b"x"),  # nothing to continue
        client_frame(0x3, b"x"),  # reserved opcode
    ],
)
def test_a_client_that_breaks_the_protocol_is_disconnected_and_nothing_reaches_engineio(data):
    c = Connected()
    c.send(data + client_frame(codec.OP_TEXT, b"4never read"))
    c.wait_closed()
    assert c.sock.received == [] and c.sock.closed
    c.client.close()


def test_engineio_closing_the_socket_sends_what_is_queued_then_a_close_frame():
    c = Connected()
    c.sock.send("bye")
    c.sock.closed = True
    c.sock.queue.put(None)  # what engine.io's Socket.close() does
    frames = c.wait_closed()
    assert frames == [
        (codec.OP_TEXT, b"4open"),
        (codec.OP_TEXT, b"4bye"),
        (codec.OP_CLOSE, (1000).to_bytes(2, "big")),
    ]
    assert c.sock.close_calls == [] and c.sock.server.sockets == {}
    c.client.close()


def test_an_idle_connection_holds_no_greenlet():
    gevent.get_hub()
    idle = live_greenlets()
    c = Connected()
    try:
        c.frames_until(1)
        gevent.sleep(0.01)
        assert not live_greenlets() - idle
        c.send(client_frame(codec.OP_TEXT, b"4hello"))
        c.frames_until(2)
        gevent.sleep(0.01)
        assert not live_greenlets() - idle
        assert c.connection.reader is None  # nor a frame parser
    finally:
        c.client.close()
    c.wait_closed()


# WakingQueue: what engine.io's Socket does with its queue (python-engineio 4.15:
# the polling transport's poll(), the upgrade-path writer, close(wait=True)).


def test_an_idle_queue_holds_no_buffer_or_waiter():
    queue = transport.WakingQueue()
    queue.put("a")
    assert queue.get_nowait() == "a"
    queue.task_done()
    assert queue.items is None and queue.readable is None and queue.finished is None
    assert queue.empty() and queue.qsize() == 0


def test_get_returns_items_in_order_and_raises_empty_without_blocking_or_after_a_timeout():
    queue = transport.WakingQueue()
    for item in ("a", "b"):
        queue.put(item)
    assert [queue.get(), queue.get(block=False)] == ["a", "b"]
    with pytest.raises(gevent.queue.Empty):
        queue.get(block=False)
    with gevent.Timeout(2), pytest.raises(gevent.queue.Empty):
        queue.get(timeout=0.01)


def test_a_waiting_get_is_woken_by_a_put_and_a_second_getter_keeps_waiting():
    queue = transport.WakingQueue()
    first = gevent.spawn(queue.get, timeout=2)
    second = gevent.spawn(queue.get, timeout=0.2)
    gevent.sleep(0)  # both wait
    queue.put("only")
    with gevent.Timeout(2):
        assert first.get() == "only"
        with pytest.raises(gevent.queue.Empty):
            second.get()


def test_join_waits_for_task_done_of_every_put():
    queue = transport.WakingQueue()
    assert queue.join(timeout=0) is True
    queue.put("a")
    queue.put(None)
    joiner = gevent.spawn(queue.join)
    gevent.sleep(0)
    queue.get()
    queue.task_done()
    gevent.sleep(0)
    assert not joiner.ready()
    queue.get()
    queue.task_done()
    with gevent.Timeout(2):
        assert joiner.get() is True
    with pytest.raises(ValueError):
        queue.task_done()


def test_each_put_wakes_the_drainer():
    queue, woken = transport.WakingQueue(), []
    queue.on_put = lambda item: woken.append(queue.qsize())
    queue.put("a")
    queue.put("b")
    assert woken == [1, 2]


class Handoff:
    """gevent-websocket's objects as hand_off finds them: a WebSocket, its pywsgi
    handler with the connection's socket, and the server's greenlet pool."""

    def __init__(self, pool_size, in_pool=1):
        self.pool = gevent.pool.Pool(pool_size)
        for _ in range(in_pool):
            self.pool.spawn(gevent.sleep, 2)
        server = type("Server", (), {"pool": self.pool})()
        self.server_side, self.client = gevent.socket.socketpair()
        self.handler = type(
            "Handler", (), {"socket": self.server_side, "server": server, "close_connection": False}
        )()
        self.gws = type("GWS", (), {"closed": False, "handler": self.handler})()
        self.websocket = type("Wrapper", (), {"_sock": self.gws})()
        self.environ = {"wsgi.input": object(), "wsgi.websocket": self.gws, "HTTP_COOKIE": "s=1"}
        self.sock = QueuedEioSocket()
        self.sock.server.sockets = {self.sock.sid: self.sock}
        self.sock.send("open")

    def run(self):
        return transport.hand_off(self.sock, self.environ, self.websocket)

    def close(self):
        self.pool.kill()
        self.client.close()


def test_hand_off_takes_the_connection_from_pywsgi_which_then_closes_only_its_descriptor():
    h = Handoff(pool_size=10, in_pool=0)
    handler_greenlet = gevent.spawn(lambda: (h.run(), len(h.pool)))
    h.pool.add(handler_greenlet)
    assert handler_greenlet.get(timeout=2) == ([], 0)  # its pool slot went with the hand-off
    connection = h.sock.direct
    assert isinstance(connection, transport.Connection)
    assert h.handler.socket is None and h.handler.close_connection and h.gws.closed
    assert h.environ["wsgi.websocket"] is None and h.environ["wsgi.input"].read() == b""
    assert h.environ["HTTP_COOKIE"] == "s=1"
    h.server_side.close()  # what pywsgi's server does once the handler returns
    h.client.settimeout(2)
    assert server_frames(h.client.recv(100)) == [(codec.OP_TEXT, b"4open")]
    h.client.sendall(client_frame(codec.OP_TEXT, b"4still here"))
    with gevent.Timeout(2):
        while not h.sock.received:
            gevent.sleep(0.005)
    assert h.sock.received == ["still here"]
    h.sock.close()
    with gevent.Timeout(2):
        while not connection.closed:
            gevent.sleep(0.005)
    h.close()


def test_hand_off_refuses_a_websocket_past_the_connection_limit():
    h = Handoff(pool_size=3, in_pool=2)  # this handler and one more in the pool
    before = transport.Connection.open_count
    transport.Connection.open_count = 2  # one more would make 4
    try:
        assert h.run() == []
    finally:
        transport.Connection.open_count = before
    assert h.sock.closed and getattr(h.sock, "direct", None) is None
    assert h.handler.socket is h.server_side and not h.gws.closed  # gevent-websocket closes it
    h.server_side.close()
    h.close()


# Close codes (RFC 6455 7.4.1) and bounds.


def close_code(frames):
    opcode, payload = frames[-1]
    assert opcode == codec.OP_CLOSE
    return int.from_bytes(payload[:2], "big") if payload else None


@pytest.mark.parametrize(
    "data, code",
    [
        (client_frame(codec.OP_TEXT, b"4hi", masked=False), 1002),
        (client_frame(codec.OP_TEXT, b"4\xff"), 1007),
        (client_frame(codec.OP_TEXT, b"4" + b"x" * 200), 1009),
        (client_frame(codec.OP_CLOSE, (1001).to_bytes(2, "big")), 1001),  # echoed
        (client_frame(codec.OP_CLOSE, b""), None),  # none sent, none echoed
    ],
)
def test_the_connection_closes_with_the_right_code(data, code):
    c = Connected()
    c.send(data)
    assert close_code(c.wait_closed()) == code
    c.client.close()


def test_a_client_that_never_reads_is_cut_once_its_queue_is_full(monkeypatch):
    monkeypatch.setattr(transport, "MAX_QUEUED_PACKETS", 20)
    c = Connected()
    before_close = c.open_before + 1
    assert transport.Connection.open_count == before_close
    with gevent.Timeout(5):
        while not c.connection.closed:  # blind: the client never reads, whatever it sends
            c.sock.send("x" * 50_000)
            gevent.sleep(0)
    assert c.sock.closed and c.connection.tcp.fileno() == -1
    assert transport.Connection.open_count == c.open_before
    c.client.close()


def test_the_connection_closes_soon_after_engineio_even_while_a_write_is_blocked(monkeypatch):
    monkeypatch.setattr(transport, "CLOSE_GRACE_S", 0.2)
    c = Connected()
    for _ in range(20):  # far more than the socket buffers hold: the drainer blocks
        c.sock.send("x" * 100_000)
    gevent.sleep(0.05)
    assert c.connection.writing
    started = time.monotonic()
    c.sock.close()  # engine.io: CLOSE queued behind the blocked write
    with gevent.Timeout(2):
        while not c.connection.closed:
            gevent.sleep(0.01)
    assert time.monotonic() - started < 1
    assert c.connection.tcp.fileno() == -1 and c.sock.server.sockets == {}
    c.client.close()


def test_a_write_that_makes_no_progress_ends_the_connection(monkeypatch):
    monkeypatch.setattr(transport, "WRITE_TIMEOUT_S", 0.2)
    c = Connected()
    for _ in range(20):
        c.sock.send("x" * 100_000)
    with gevent.Timeout(2):
        while not c.connection.closed:
            gevent.sleep(0.01)
    assert c.sock.closed
    c.client.close()


def test_a_message_split_over_reads_keeps_a_reader_only_until_it_is_whole():
    c = Connected()
    c.frames_until(1)
    data = client_frame(codec.OP_TEXT, b"4" + b"x" * 50)
    c.send(data[:20])
    with gevent.Timeout(2):
        while c.connection.reader is None:
            gevent.sleep(0.005)
    c.send(data[20:])
    assert c.frames_until(2)[1] == (codec.OP_TEXT, b"4ack " + b"x" * 50)
    assert c.connection.reader is None
    c.client.close()
    c.wait_closed()


def test_a_close_delivers_every_frame_even_with_client_data_left_unread():
    """Closing a TCP socket whose receive buffer holds unread data sends a reset, and a
    reset makes the peer (Nginx) drop what it has not read yet: a refusal's
    CONNECT_ERROR or the last events could be lost. The close is a lingering one."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gevent.socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    sock = QueuedEioSocket()
    sock.server.sockets = {sock.sid: sock}
    sock.send("open")
    connection = transport.Connection(sock, server_side)
    last = "x" * (3 << 20)  # about what the socket buffers hold (under the queue bound)
    sock.send(last)
    client.sendall(client_frame(codec.OP_CLOSE, (1000).to_bytes(2, "big")))
    with gevent.Timeout(2):
        while not connection.ending:
            gevent.sleep(0.005)
    client.sendall(client_frame(codec.OP_TEXT, b"4late") * 100)  # never read: ending
    received = b""
    client.settimeout(5)
    try:
        while chunk := client.recv(1 << 16):
            received += chunk
    finally:
        client.close()
    frames = server_frames(received)
    assert frames[-2] == (codec.OP_TEXT, b"4" + last.encode())
    assert frames[-1][0] == codec.OP_CLOSE


# Before the Socket.IO CONNECT is accepted (the credentials are checked there), a
# socket may send only small messages, and a partial message only for a while.


def big_buffer(c, authenticated):
    c.sock.server.max_http_buffer_size = 1 << 20
    c.sock.server.taskbeam_authenticated = lambda eio_sid: authenticated


def test_before_authentication_a_message_is_capped_at_64_kib():
    c = Connected()
    big_buffer(c, authenticated=False)
    c.frames_until(1)
    c.send(client_frame(codec.OP_TEXT, b"4" + b"x" * (64 * 1024)))
    assert close_code(c.wait_closed()) == 1009 and c.sock.received == []
    assert c.connection.reader is None  # its partial message is let go
    c.client.close()


def test_after_authentication_the_full_limit_applies():
    c = Connected()
    big_buffer(c, authenticated=True)
    c.frames_until(1)
    c.send(client_frame(codec.OP_TEXT, b"4" + b"x" * (64 * 1024)))
    assert c.frames_until(2)[1][1].startswith(b"4ack x")
    c.client.close()
    c.wait_closed()


def test_a_partial_message_not_finished_in_time_ends_the_connection(monkeypatch):
    monkeypatch.setattr(transport, "PARTIAL_MESSAGE_TIMEOUT_S", 0.2)
    c = Connected()
    c.frames_until(1)
    data = client_frame(codec.OP_TEXT, b"4" + b"x" * 50)
    c.send(data[:20])  # and never the rest
    started = time.monotonic()
    assert close_code(c.wait_closed()) == 1008
    assert 0.15 < time.monotonic() - started < 1.5
    assert c.connection.reader is None and c.sock.received == []
    c.client.close()


def test_the_stock_transport_bounds_only_whole_messages():
    # WEB_FAST_TRANSPORT=0 (docs/api.md): gevent-websocket reads a frame as long as its
    # header says before engine.io's max_http_buffer_size (1 MiB) sees the message, so
    # a socket, authenticated or not, holds an unfinished message of any size while its
    # bytes keep coming (engine.io's socket timeout, ping interval + timeout, is per
    # read). Left as the libraries ship it on purpose: the stock path is what the fast
    # transport falls back to, so it must not depend on their private parts
    # (docs/security.md).
    server_end, client = gevent.socket.socketpair()
    handler = types.SimpleNamespace(
        rfile=server_end.makefile("rb", -1), socket=server_end, logger=logging.getLogger(__name__)
    )
    ws = WebSocket({}, Stream(handler), handler)
    reading = gevent.spawn(ws.receive)
    claimed = 2 * MAX_BODY_BYTES
    client.sendall(bytes(Header.encode_header(True, WebSocket.OPCODE_TEXT, b"\0" * 4, claimed, 0)))
    client.sendall(b"4" + b"x" * (MAX_BODY_BYTES - 1))  # returns once the reader took most
    assert not reading.ready()  # a header over the bound was not refused; 1 MiB is held
    client.sendall(b"x" * MAX_BODY_BYTES)
    assert len(reading.get(timeout=10)) == claimed  # only now could engine.io refuse it
    ws.close()
    handler.rfile.close()
    server_end.close()
    client.close()

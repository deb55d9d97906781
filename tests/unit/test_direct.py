"""The direct WebSocket write path: frames, addressing, and when it must queue."""
import gc
import json

import gevent
import greenlet
import pytest
from engineio import packet as eio_packet
from geventwebsocket.websocket import Header, WebSocket

from taskbeam.web import direct


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_matches_gevent_websocket_header(size):
    payload = b"x" * size
    header = Header.encode_header(True, WebSocket.OPCODE_TEXT, b"", size, 0)
    assert direct.text_frame(payload) == bytes(header) + payload


class FakeQueue(list):
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
        taken = data[:self.room]
        self.room -= len(taken)
        self.sent += taken
        return len(taken)


class FakeEioSocket:
    def __init__(self, raw):
        self.upgraded, self.closed, self.queue = True, False, FakeQueue()
        ws = direct.DirectWebSocket.__new__(direct.DirectWebSocket)
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
    msg = {"method": "emit", "event": "task_update", "data": [{"seq": 1}], "namespace": "/",
           "room": "task:a", "skip_sid": None, "callback": None}
    msg.update(overrides)
    return msg


def wire(event_json):
    return direct.text_frame(("42" + event_json).encode())


def test_idle_sockets_get_the_frame_written_directly_and_others_in_the_room_too():
    raws = {"e1": FakeRawSocket(), "e2": FakeRawSocket()}
    sockets = {sid: FakeEioSocket(raw) for sid, raw in raws.items()}
    manager = FakeManager({"/": {"task:a": {"s1": "e1", "s2": "e2"}}}, sockets)
    assert direct.deliver(manager, message()) is True
    expected = wire(json.dumps(["task_update", {"seq": 1}], separators=(",", ":")))
    assert raws["e1"].sent == raws["e2"].sent == expected
    assert manager.server.queued == []


def test_a_socket_with_queued_packets_or_a_write_in_progress_gets_queued_in_order():
    raw_busy, raw_backlog = FakeRawSocket(), FakeRawSocket()
    busy, backlog = FakeEioSocket(raw_busy), FakeEioSocket(raw_backlog)
    busy.direct.writing = True
    backlog.queue.put("earlier packet")
    manager = FakeManager({"/": {"task:a": {"s1": "e1", "s2": "e2"}}},
                          {"e1": busy, "e2": backlog})
    direct.deliver(manager, message())
    assert raw_busy.sent == raw_backlog.sent == b""
    assert [sid for sid, _ in manager.server.queued] == ["e1", "e2"]
    assert manager.server.queued[0][1] == '42["task_update",{"seq":1}]'


def test_a_full_socket_buffer_queues_the_whole_frame_and_a_partial_write_queues_the_rest():
    full, partial = FakeRawSocket(room=0), FakeRawSocket(room=5)
    manager = FakeManager({"/": {"task:a": {"s1": "e1", "s2": "e2"}}},
                          {"e1": FakeEioSocket(full), "e2": FakeEioSocket(partial)})
    direct.deliver(manager, message())
    frame = wire('["task_update",{"seq":1}]')
    assert [sid for sid, _ in manager.server.queued] == ["e1"]
    tail = manager.server.eio.sockets["e2"].queue  # the unsent rest, for the writer
    assert len(tail) == 1 and partial.sent + tail[0].encode().data == frame


def test_skip_sid_and_other_rooms_are_left_out():
    raws = {"e1": FakeRawSocket(), "e2": FakeRawSocket(), "e3": FakeRawSocket()}
    manager = FakeManager({"/": {"task:a": {"s1": "e1", "s2": "e2"}, "task:b": {"s3": "e3"}}},
                          {sid: FakeEioSocket(raw) for sid, raw in raws.items()})
    direct.deliver(manager, message(skip_sid="s1"))
    assert (bool(raws["e1"].sent), bool(raws["e2"].sent), bool(raws["e3"].sent)) == (
        False, True, False)


def test_callbacks_and_binary_are_left_to_python_socketio():
    manager = FakeManager({"/": {}}, {})
    assert direct.deliver(manager, message(callback=["s", "/", 1])) is False
    assert direct.deliver(manager, message(binary=True)) is False


@pytest.mark.parametrize("data, args", [
    ([{"a": 1}], [{"a": 1}]), ([1, 2], [1, 2]), ([None], []), ("text", ["text"]),
])
def test_arguments_are_spread_like_python_socketio(data, args):
    raw = FakeRawSocket()
    manager = FakeManager({"/": {"task:a": {"s1": "e1"}}}, {"e1": FakeEioSocket(raw)})
    direct.deliver(manager, message(data=data))
    assert raw.sent == wire(json.dumps(["task_update", *args], separators=(",", ":")))


def test_other_namespaces_are_addressed_in_the_packet():
    raw = FakeRawSocket()
    manager = FakeManager({"/admin": {"task:a": {"s1": "e1"}}}, {"e1": FakeEioSocket(raw)})
    direct.deliver(manager, message(namespace="/admin"))
    assert raw.sent == direct.text_frame(b'42/admin,["task_update",{"seq":1}]')


# The writer on demand: Drainer and serve (engine.io's WebSocket handler without
# a writer greenlet waiting on the queue).

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


class FakeServerForServe:
    max_http_buffer_size = 100
    reason = type("Reason", (), {"TRANSPORT_CLOSE": "transport close"})

    def __init__(self):
        quiet = staticmethod(lambda *args, **kwargs: None)
        self.logger = type("Logger", (), {"info": quiet, "exception": quiet})()


class SocketForServe:
    """An engine.io socket as serve() uses it: a WakingQueue, receive and close."""

    def __init__(self):
        self.server, self.sid = FakeServerForServe(), "e1"
        self.queue = direct.WakingQueue()
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


def live_greenlets():
    return sum(isinstance(o, greenlet.greenlet) and not o.dead for o in gc.get_objects())


def test_the_drainer_sends_what_is_queued_in_order_and_then_holds_no_greenlet():
    sock, ws = SocketForServe(), FakeWebSocket()
    drainer = direct.Drainer(sock, ws)
    sock.queue.on_put = drainer.wake
    gevent.get_hub()
    idle = live_greenlets()
    sock.send("a")
    sock.send("b")
    drainer.join()
    assert ws.sent == ["4a", "4b"]
    assert drainer.greenlet is None and live_greenlets() == idle
    sock.send("c")  # woken again by the next packet
    drainer.join()
    assert ws.sent == ["4a", "4b", "4c"]


def test_the_end_closes_the_websocket_and_later_packets_only_keep_join_from_waiting():
    sock, ws = SocketForServe(), FakeWebSocket()
    drainer = direct.Drainer(sock, ws)
    sock.queue.on_put = drainer.wake
    sock.send("last")
    sock.queue.put(None)
    sock.send("too late")
    drainer.join()
    assert ws.sent == ["4last"] and ws.closed
    with gevent.Timeout(2):
        sock.queue.join()


def test_a_broken_connection_ends_the_drainer_without_leaving_packets_behind():
    sock, ws = SocketForServe(), FakeWebSocket(broken=True)
    drainer = direct.Drainer(sock, ws)
    sock.queue.on_put = drainer.wake
    sock.send("a")
    sock.send("b")
    drainer.join()
    assert ws.closed and sock.queue.empty()


def test_serve_sends_the_queued_open_packet_first_reads_until_the_client_closes_and_closes():
    sock = SocketForServe()
    sock.send("open")  # engine.io queues OPEN before the WebSocket handler runs
    ws = FakeWebSocket(incoming=["4hello", "4again"])
    assert direct.serve(sock, ws) == []
    assert sock.connected and sock.upgraded
    assert sock.received == ["hello", "again"]
    assert ws.sent == ["4open", "4ack hello", "4ack again"] and ws.closed
    assert sock.close_calls == [(False, True, "transport close")]


def test_serve_drops_a_client_whose_packet_is_too_large():
    sock = SocketForServe()
    ws = FakeWebSocket(incoming=["4" + "x" * 200, "4never read"])
    direct.serve(sock, ws)
    assert sock.received == [] and ws.closed and sock.closed


# WakingQueue: what engine.io's Socket does with its queue (python-engineio 4.15:
# the polling transport's poll(), the upgrade-path writer, close(wait=True)).

def test_an_idle_queue_holds_no_buffer_or_waiter():
    queue = direct.WakingQueue()
    queue.put("a")
    assert queue.get_nowait() == "a"
    queue.task_done()
    assert queue.items is None and queue.readable is None and queue.finished is None
    assert queue.empty() and queue.qsize() == 0


def test_get_returns_items_in_order_and_raises_empty_without_blocking_or_after_a_timeout():
    queue = direct.WakingQueue()
    for item in ("a", "b"):
        queue.put(item)
    assert [queue.get(), queue.get(block=False)] == ["a", "b"]
    with pytest.raises(gevent.queue.Empty):
        queue.get(block=False)
    with gevent.Timeout(2), pytest.raises(gevent.queue.Empty):
        queue.get(timeout=0.01)


def test_a_waiting_get_is_woken_by_a_put_and_a_second_getter_keeps_waiting():
    queue = direct.WakingQueue()
    first = gevent.spawn(queue.get, timeout=2)
    second = gevent.spawn(queue.get, timeout=0.2)
    gevent.sleep(0)  # both wait
    queue.put("only")
    with gevent.Timeout(2):
        assert first.get() == "only"
        with pytest.raises(gevent.queue.Empty):
            second.get()


def test_join_waits_for_task_done_of_every_put():
    queue = direct.WakingQueue()
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
    queue, woken = direct.WakingQueue(), []
    queue.on_put = lambda: woken.append(queue.qsize())
    queue.put("a")
    queue.put("b")
    assert woken == [1, 2]

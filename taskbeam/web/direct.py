"""The WebSocket write side of engine.io in this process: direct writes, and a
writer greenlet only while something is queued.

python-engineio sends every packet through a per-socket queue drained by a
writer greenlet: per delivered event a queue put, two greenlet switches, a timer
for the writer's wait and an exception to find the queue empty again. py-spy put
that handoff at about a third of the web process's CPU per event under fan-in
(`make bench`). When nothing is queued for a socket and nothing is being written
to it, the listener writes the finished frame itself, without waiting: order is
kept, and a slow client (full socket buffer) still gets its frames through the
queue, so it never stalls the listener.

The writer greenlet itself, blocked on its queue, cost each idle socket about
8 KB of RSS (its saved stack, its object, its timer). For a client
that opens with a WebSocket, :func:`serve` replaces engine.io's handler: the
same reading loop, and a :class:`Drainer` that runs only while the queue holds
something. Clients that upgrade from long-polling keep engine.io's handler.
"""
import collections
import functools
import socket
import time

import gevent
import gevent.event
import gevent.queue
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers.gevent import WebSocketWSGI
from socketio import packet as sio_packet


def text_frame(payload):
    """A final, unmasked WebSocket text frame (RFC 6455 5.2) carrying ``payload`` bytes."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = b"\x81\x7e" + size.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + size.to_bytes(8, "big")
    return header + payload


class _Rest:
    """The unsent tail of a frame, queued for the writer greenlet (``encode()``-able
    like the engine.io packets it drains)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def encode(self):
        return self


class WakingQueue:
    """engine.io's per-socket packet queue, calling ``on_put`` after each put.

    It has what engine.io uses of gevent's ``JoinableQueue`` (put, get with
    block and timeout, ``get_nowait``, ``task_done``, ``join``, ``empty``), and
    holds no buffer or waiter while idle: gevent's keeps three deques (~2.3 KB)
    for every socket, which tracemalloc put among the largest items per idle
    socket. One greenlet runs at a time, so no lock is needed.
    """

    __slots__ = ("items", "unfinished", "readable", "finished", "on_put")

    def __init__(self):
        self.items = None       # a deque while something is queued
        self.unfinished = 0     # put and not yet task_done(), for join()
        self.readable = None    # an Event, once a getter had to wait
        self.finished = None    # an Event, while join() waits
        self.on_put = None

    def put(self, item, block=True, timeout=None):
        if self.items is None:
            self.items = collections.deque()
        self.items.append(item)
        self.unfinished += 1
        if self.readable is not None:
            self.readable.set()
        if self.on_put is not None:
            self.on_put()

    def get(self, block=True, timeout=None):
        if not self.items:
            if not block:
                raise gevent.queue.Empty
            self._wait_for_item(timeout)
        item = self.items.popleft()
        if not self.items:
            self.items = None
            if self.readable is not None:
                self.readable.clear()
        return item

    def get_nowait(self):
        return self.get(block=False)

    def _wait_for_item(self, timeout):
        # `readable` is set exactly while items are queued.
        if self.readable is None:
            self.readable = gevent.event.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.items:  # again if another getter took the item first
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise gevent.queue.Empty
            self.readable.wait(remaining)

    def task_done(self):
        if self.unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self.unfinished -= 1
        if self.unfinished == 0 and self.finished is not None:
            self.finished.set()
            self.finished = None

    def join(self, timeout=None):
        if self.unfinished:
            if self.finished is None:
                self.finished = gevent.event.Event()
            return self.finished.wait(timeout)
        return True

    def empty(self):
        return not self.items

    def qsize(self):
        return len(self.items) if self.items else 0


class Drainer:
    """Sends what engine.io queues for one WebSocket, from a greenlet that exists
    only while the queue holds something (engine.io's writer, on demand)."""

    __slots__ = ("sock", "ws", "greenlet", "done")

    def __init__(self, sock, ws):
        self.sock, self.ws, self.greenlet, self.done = sock, ws, None, False

    def wake(self):
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self.run)

    def run(self):
        queue = self.sock.queue
        try:
            while True:
                try:
                    pkt = queue.get_nowait()
                except gevent.queue.Empty:
                    return
                queue.task_done()
                if self.done:
                    continue  # after the end, only so that queue.join() returns
                if pkt is None:  # engine.io closing the socket
                    self.finish()
                    continue
                try:
                    self.ws.send(pkt.encode())
                except Exception:  # broken connection: engine.io's writer gives up too
                    self.finish()
        finally:
            self.greenlet = None

    def finish(self):
        self.done = True
        self.ws.close()

    def join(self):
        if self.greenlet is not None:
            self.greenlet.join()


def serve(sock, ws):
    """engine.io's ``Socket._websocket_handler`` for a client that opened with a
    WebSocket (python-engineio 4.15), with a :class:`Drainer` for its writer."""
    server = sock.server
    sock.connected = sock.upgraded = True
    drainer = Drainer(sock, ws)
    sock.queue.on_put = drainer.wake
    drainer.wake()  # the OPEN packet, queued before the WebSocket was there
    try:
        while True:
            try:
                data = ws.wait()
                if data and len(data) > server.max_http_buffer_size:
                    raise ValueError("packet is too large")
            except Exception as exc:
                if not sock.closed:
                    server.logger.info('%s: Unexpected error "%s", closing connection',
                                       sock.sid, exc)
                break
            if data is None:  # closed by the client
                break
            try:
                sock.receive(eio_packet.Packet(encoded_packet=data))
            except eio_exceptions.UnknownPacketError:
                pass
            except eio_exceptions.SocketIsClosedError:
                server.logger.info("Receive error -- socket is closed")
                break
            except Exception:
                server.logger.exception("Unknown receive error")
                break
    finally:
        sock.queue.put(None)  # the drainer closes the WebSocket after what is queued
        drainer.join()
        sock.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
    return []


class DirectWebSocket(WebSocketWSGI):
    """engine.io's gevent-websocket wrapper that also accepts direct writes.

    engine.io calls it with its Socket's bound ``_websocket_handler``; the wrapper
    registers itself on that Socket as ``direct`` for as long as the WebSocket
    lives, and runs :func:`serve` instead for a socket that is not connected yet.
    """

    writing = False  # a writer is inside a send (it may be blocked)

    def __call__(self, environ, start_response):
        self.eio_socket = self.app.__self__
        self.eio_socket.direct = self
        if not self.eio_socket.connected and isinstance(self.eio_socket.queue, WakingQueue):
            self.app = functools.partial(serve, self.eio_socket)
        try:
            return super().__call__(environ, start_response)
        finally:
            self.eio_socket.direct = None

    def send(self, message):
        self.writing = True
        try:
            if isinstance(message, _Rest):
                self._sock.stream.write(message.data)
            else:
                super().send(message)
        finally:
            self.writing = False

    @property
    def tcp(self):
        """The connection's gevent socket, under gevent-websocket's stream."""
        return self._sock.stream.handler.socket

    def cut(self):
        """Drop the TCP connection as a failing network would: clients reconnect."""
        self.tcp.shutdown(socket.SHUT_RDWR)

    def try_send(self, frame):
        """Write ``frame`` now if the socket is idle; False if the queue must take it."""
        sock = self.eio_socket
        if self.writing or not sock.upgraded or sock.closed or not sock.queue.empty():
            return False
        try:
            sent = self.tcp.send(frame, 0, 0.0)  # never waits
        except OSError:  # would block, or broken: the writer's path handles both
            return False
        if sent < len(frame):
            sock.queue.put(_Rest(frame[sent:]))
        return True


def install(sio_server):
    """Make ``sio_server``'s engine.io server wrap WebSockets in :class:`DirectWebSocket`
    and give its sockets a :class:`WakingQueue`."""
    eio = sio_server.eio
    eio._async = dict(eio._async, websocket=DirectWebSocket, queue=WakingQueue)


def deliver(manager, message):
    """Forward an ``emit`` from the message queue to this process's recipients.

    Same addressing as python-socketio's ``Manager.emit``; returns False for what
    it leaves to python-socketio (acknowledgement callbacks, binary payloads).
    """
    if message.get("callback") is not None or message.get("binary"):
        return False
    data = message.get("data")
    args = list(data) if isinstance(data, list) else [data]
    if args == [None]:
        args = []
    namespace = message.get("namespace") or "/"
    skip = message.get("skip_sid")
    skip = skip if isinstance(skip, list) else [skip]
    packet_class = manager.server.packet_class
    if namespace == "/":  # what Packet.encode() writes, less its per-call checks
        encoded = str(sio_packet.EVENT) + packet_class.json.dumps(
            [message["event"]] + args, separators=(",", ":"))
    else:
        encoded = packet_class(sio_packet.EVENT, namespace=namespace,
                               data=[message["event"]] + args).encode()
        if not isinstance(encoded, str):
            return False
    frame = queued = None
    sockets = manager.server.eio.sockets
    for sid, eio_sid in manager.get_participants(namespace, message.get("room")):
        if sid in skip:
            continue
        direct = getattr(sockets.get(eio_sid), "direct", None)
        if direct is not None:
            frame = frame or text_frame(("4" + encoded).encode())
            if direct.try_send(frame):
                continue
        queued = queued or eio_packet.Packet(eio_packet.MESSAGE, encoded)
        manager.server._send_eio_packet(eio_sid, queued)
    return True

"""engine.io's WebSocket transport in this process: direct writes, and no greenlet
per idle socket.

python-engineio sends every packet through a per-socket queue drained by a
writer greenlet: per delivered event a queue put, two greenlet switches, a timer
for the writer's wait and an exception to find the queue empty again. py-spy put
that handoff at about a third of the web process's CPU per event under fan-in
(`make bench`). When nothing is queued for a socket and nothing is being written
to it, the listener writes the finished frame itself, without waiting: order is
kept, and a slow client (full socket buffer) still gets its frames through the
queue, so it never stalls the listener.

An idle socket used to hold two greenlets for its whole life: engine.io's writer
blocked on its queue, and gevent-websocket's reader blocked in a read deep in
pywsgi's and the WSGI app's stack (~7 KB of saved stack, plus pywsgi's request
objects). A client that opens with a WebSocket is handed off to a
:class:`Connection` after the handshake: the pywsgi handler ends, a libev watcher
waits for the client, and greenlets exist only while a read is handled or a
:class:`Drainer` writes what is queued. Clients that upgrade from long-polling
keep engine.io's handler.
"""
import collections
import functools
import io
import logging
import socket
import time

import gevent
import gevent.event
import gevent.queue
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers.gevent import WebSocketWSGI
from socketio import packet as sio_packet

log = logging.getLogger(__name__)


OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode, payload):
    """A final, unmasked WebSocket frame (RFC 6455 5.2) carrying ``payload`` bytes."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")
    return header + payload


def text_frame(payload):
    return frame(OP_TEXT, payload)


CLOSE_FRAME = frame(OP_CLOSE, (1000).to_bytes(2, "big"))  # normal closure


class ProtocolError(Exception):
    """A client frame that breaks RFC 6455, or a message over the size limit."""


def unmask(payload, key):
    if not payload:
        return b""
    size = len(payload)
    keystream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")).to_bytes(
        size, "little")


def parse_frame(buffer, pos, limit):
    """The client frame at ``buffer[pos:]``: ``(fin, opcode, payload, end)``, or
    None while it is incomplete. Client frames are masked, and use no extensions."""
    if len(buffer) - pos < 2:
        return None
    first, second = buffer[pos], buffer[pos + 1]
    if first & 0x70 or not second & 0x80:
        raise ProtocolError("reserved bits set or unmasked client frame")
    size, head = second & 0x7F, pos + 2
    if size >= 126:
        width = 2 if size == 126 else 8
        if len(buffer) - head < width:
            return None
        size = int.from_bytes(buffer[head:head + width], "big")
        head += width
    if size > limit:
        raise ProtocolError("message is too large")
    end = head + 4 + size
    if len(buffer) < end:
        return None
    return bool(first & 0x80), first & 0x0F, unmask(buffer[head + 4:end], buffer[head:head + 4]), end


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



class DirectWrites:
    """Writing a finished frame straight to a WebSocket's TCP connection."""

    __slots__ = ()
    writing = False  # a writer is inside a send (it may be blocked)

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

    def cut(self):
        """Drop the TCP connection as a failing network would: clients reconnect."""
        self.tcp.shutdown(socket.SHUT_RDWR)


class Connection(DirectWrites):
    """A WebSocket that opened directly, after the handshake: engine.io's
    ``_websocket_handler`` (python-engineio 4.15) without a greenlet while idle.

    A libev watcher waits until the client sends; then a greenlet reads, handles
    the complete frames (engine.io's handlers may block) and ends. Writes go
    through :meth:`try_send` or the socket's :class:`Drainer`.
    """

    __slots__ = ("eio_socket", "tcp", "watcher", "buffer", "fragments",
                 "writing", "ending", "closed")
    READ_BYTES = 4096
    open_count = 0  # in this process, bounded together with the server's pool

    def __init__(self, eio_socket, tcp):
        self.eio_socket, self.tcp = eio_socket, tcp
        self.buffer, self.fragments = b"", None
        self.writing = self.ending = self.closed = False
        drainer = Drainer(eio_socket, self)  # kept alive by the queue's on_put
        self.watcher = gevent.get_hub().loop.io(tcp.fileno(), 1)  # 1: readable
        Connection.open_count += 1
        eio_socket.connected = eio_socket.upgraded = True
        eio_socket.direct = self
        eio_socket.queue.on_put = drainer.wake
        drainer.wake()  # the OPEN packet, queued before the WebSocket was there
        self.watcher.start(self.on_readable)

    def on_readable(self):  # in the hub, which must not block
        self.watcher.stop()
        gevent.spawn(self.read)

    def read(self):
        server = self.eio_socket.server
        try:
            data = self.tcp.recv(self.READ_BYTES)  # readable: returns at once
            if not data:  # closed by the client
                return self.end()
            if self.buffer:  # a bytearray: the rest of a frame is arriving
                self.buffer += data
            else:
                self.buffer = data
            self.handle_frames(server.max_http_buffer_size)
        except ProtocolError as exc:
            server.logger.info('%s: WebSocket protocol error "%s", closing connection',
                               self.eio_socket.sid, exc)
            self.end()
        except Exception as exc:
            if not self.eio_socket.closed:
                server.logger.info('%s: Unexpected error "%s", closing connection',
                                   self.eio_socket.sid, exc)
            self.end()
        finally:
            if not self.ending:
                self.watcher.start(self.on_readable)

    def handle_frames(self, limit):
        buffer, pos = self.buffer, 0
        while not self.ending:
            parsed = parse_frame(buffer, pos, limit)
            if parsed is None:
                break
            fin, opcode, payload, pos = parsed
            self.handle_frame(fin, opcode, payload, limit)
        rest = buffer[pos:]
        self.buffer = bytearray(rest) if rest else b""

    def handle_frame(self, fin, opcode, payload, limit):
        if opcode >= OP_CLOSE:  # control frames: never fragmented, at most 125 bytes
            if not fin or len(payload) > 125:
                raise ProtocolError("bad control frame")
            if opcode == OP_PING:
                pong = frame(OP_PONG, payload)
                # In order with what is queued; but a client that pings without
                # reading does not grow the queue past a few packets.
                if not self.try_send(pong) and self.eio_socket.queue.qsize() < 16:
                    self.eio_socket.queue.put(_Rest(pong))
            elif opcode == OP_CLOSE:
                self.end()
            elif opcode != OP_PONG:
                raise ProtocolError(f"unknown opcode {opcode}")
            return
        if opcode == OP_CONTINUATION:
            if self.fragments is None:
                raise ProtocolError("continuation frame without a message")
            self.fragments[1].extend(payload)
            if len(self.fragments[1]) > limit:
                raise ProtocolError("message is too large")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self.fragments is not None:
                raise ProtocolError("new message inside a fragmented one")
            self.fragments = (opcode, bytearray(payload))
        else:
            raise ProtocolError(f"unknown opcode {opcode}")
        if fin:
            opcode, message = self.fragments
            self.fragments = None
            self.receive(opcode, bytes(message))

    def receive(self, opcode, data):
        if opcode == OP_TEXT:
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("text message is not UTF-8") from None
        sock, server = self.eio_socket, self.eio_socket.server
        try:
            sock.receive(eio_packet.Packet(encoded_packet=data))
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            server.logger.info("Receive error -- socket is closed")
            self.end()
        except Exception:
            server.logger.exception("Unknown receive error")
            self.end()

    def send(self, message):
        """The Drainer's write: an engine.io packet's encoding, or a frame's rest."""
        self.writing = True
        try:
            if isinstance(message, _Rest):
                self.tcp.sendall(message.data)
            elif isinstance(message, str):
                self.tcp.sendall(frame(OP_TEXT, message.encode()))
            else:
                self.tcp.sendall(frame(OP_BINARY, message))
        finally:
            self.writing = False

    def end(self):
        """The client closed or broke the protocol: engine.io closes the socket, then
        the drainer closes the connection after what is queued."""
        if self.ending:
            return
        self.ending = True
        self.watcher.stop()
        sock = self.eio_socket
        sock.queue.put(None)
        sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)

    def close(self):
        """The Drainer's end of the connection (after engine.io closed the socket,
        or a write broke)."""
        if self.closed:
            return
        self.closed = self.ending = True
        Connection.open_count -= 1
        self.watcher.stop()
        sock = self.eio_socket
        try:
            self.tcp.send(CLOSE_FRAME, 0, 0.0)  # a courtesy: never waits
        except OSError:
            pass
        self.tcp.close()
        if not sock.closed:  # a broken write: engine.io learns it here
            sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)
        if sock.server.sockets.get(sock.sid) is sock:
            del sock.server.sockets[sock.sid]
        sock.direct = None


def hand_off(sock, environ, websocket):
    """Take a WebSocket that just opened from gevent-websocket and pywsgi.

    Runs as the WSGI app's body in the connection's pywsgi handler greenlet,
    which then ends. The handler closes its own descriptor of the socket, so the
    Connection keeps a duplicate, and gevent-websocket is told its WebSocket is
    closed so that it writes nothing more. The client sends no frame before it
    has the handshake's answer (RFC 6455 4.1), so pywsgi's read buffer holds none.
    ``environ`` is the request's, which python-socketio keeps for the session: it
    must not keep pywsgi's reader (and so its descriptor) or the WebSocket alive.
    """
    environ["wsgi.input"], environ["wsgi.websocket"] = io.BytesIO(), None
    handler = websocket._sock.handler
    pool = getattr(handler.server, "pool", None)  # Gunicorn's: worker_connections handlers
    if pool is not None and pool.size is not None:
        # Handed-off connections count against the worker's connection limit too.
        if Connection.open_count + len(pool) > pool.size:
            log.warning("%d WebSockets open and %d requests in progress: refusing one more",
                        Connection.open_count, len(pool))
            sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)
            return []
        pool.discard(gevent.getcurrent())  # now, not when the pool hears that it ended
    tcp = handler.socket.dup()
    websocket._sock.closed = True
    handler.socket, handler.close_connection = None, True  # pywsgi: no drain, no close
    Connection(sock, tcp)
    return []


class DirectWebSocket(DirectWrites, WebSocketWSGI):
    """engine.io's gevent-websocket wrapper that also accepts direct writes.

    engine.io calls it with its Socket's bound ``_websocket_handler``. A socket
    that is not connected yet (the client opened with a WebSocket) is handed off
    to a :class:`Connection`; one upgrading from long-polling keeps engine.io's
    handler, and the wrapper is its ``direct`` writer while the WebSocket lives.
    """

    def __call__(self, environ, start_response):
        self.eio_socket = self.app.__self__
        if not self.eio_socket.connected and isinstance(self.eio_socket.queue, WakingQueue):
            self.app = functools.partial(hand_off, self.eio_socket, environ)
            return super().__call__(environ, start_response)
        self.eio_socket.direct = self
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

"""engine.io's WebSocket transport in this process: direct writes, no greenlet per
idle socket, every per-socket buffer bounded.

python-engineio sends every packet through a per-socket queue drained by a
writer greenlet: per delivered event a queue put, two greenlet switches, a timer
and an exception. When nothing is queued for a socket and nothing is being
written to it, :func:`deliver` writes the finished frame itself without waiting
(:meth:`DirectWrites.try_send`); otherwise the frame goes through the queue, so
order is kept and a slow client never stalls the listener.

A client that opens with a WebSocket (``EIO=4&transport=websocket``) gets this
module's handshake (:func:`opens_websocket`, :func:`open_directly`), not
gevent-websocket's: engine.io makes the session and python-socketio hears of it
as always, then the ``101`` answer and engine.io's OPEN packet go out in one
write, and the connection is a :class:`Connection`: the pywsgi handler ends, a
libev watcher waits for the client, and greenlets exist only while a read is
handled or a :class:`Drainer` writes what is queued. Clients that upgrade from
long-polling keep gevent-websocket and engine.io's handler, wrapped by
:class:`UpgradedWebSocket`.

Bounds: until its Socket.IO CONNECT is accepted (the credentials are checked
there) a client's message may hold ``PRE_AUTH_MAX_MESSAGE_BYTES``, then
``max_http_buffer_size``; a message left partial for ``PARTIAL_MESSAGE_TIMEOUT_S``
ends the connection. A socket's queue holds at most ``MAX_QUEUED_PACKETS`` packets and
``MAX_QUEUED_BYTES`` bytes (past either, the connection is cut and the client
resumes with ``after``); a write that makes no progress for
``WRITE_TIMEOUT_S`` ends the connection; once engine.io closes a socket its TCP
connection is closed after what is queued, or ``CLOSE_GRACE_S`` later at the
latest.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import io
import logging
import socket
import time
import urllib.parse
from typing import Any

import gevent
import gevent.event
import gevent.queue
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers.gevent import WebSocketWSGI
from socketio import packet as sio_packet

from . import codec, seams

log = logging.getLogger(__name__)

# Packets and bytes a client may fall behind before its connection is cut (it
# reconnects and resumes with `after`): what a client that never reads, or sends
# engine.io PONGs blindly to stay alive, can make this process hold for it.
MAX_QUEUED_PACKETS = 4096
# What an unauthenticated socket may make this process hold in a message (an
# auth token is at most 8 KiB), and how long any socket may leave one unfinished.
PRE_AUTH_MAX_MESSAGE_BYTES = 64 * 1024
PARTIAL_MESSAGE_TIMEOUT_S = 20.0
MAX_QUEUED_BYTES = 4 * 1024 * 1024
# A write that makes no progress for this long ends the connection.
WRITE_TIMEOUT_S = 30.0
# After engine.io closes a socket, what is queued may still go out for this long.
CLOSE_GRACE_S = 3.0
# After our close frame, how long a closing connection waits for the client to close
# its side (see Connection.linger).
LINGER_S = 2.0
MAX_QUEUED_PONGS = 16  # a client that pings without reading gets no more
READ_BYTES, READ_BYTES_MID_MESSAGE = 4096, 65536


class FramedBytes:
    """Bytes already framed (the unsent tail of a frame, a pong), queued for the
    writer; ``encode()``-able like the engine.io packets it drains."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def encode(self) -> FramedBytes:
        return self


def queued_size(item: Any) -> int:
    data = getattr(item, "data", None)
    return len(data) if isinstance(data, (str, bytes)) else 0


class WakingQueue:
    """engine.io's per-socket packet queue: calls ``on_put`` after each put, and
    ``on_overflow`` once when it holds too much.

    It has what engine.io uses of gevent's ``JoinableQueue`` (put, get with
    block and timeout, ``get_nowait``, ``task_done``, ``join``, ``empty``), and
    holds no buffer or waiter while idle: gevent's keeps three deques (~2.3 KB)
    per socket. One greenlet runs at a time, so no lock is needed.
    """

    __slots__ = (
        "items",
        "bytes",
        "unfinished",
        "readable",
        "finished",
        "send_now",
        "on_put",
        "on_overflow",
    )

    def __init__(self):
        self.items = None  # a deque while something is queued
        self.bytes = 0  # payload bytes of the queued items
        self.unfinished = 0  # put and not yet task_done(), for join()
        self.readable = None  # an Event, once a getter had to wait
        self.finished = None  # an Event, while join() waits
        self.send_now = None  # offered each item while none is queued; True: it was sent
        self.on_put = None  # called with the item once queued
        self.on_overflow = None

    def put(self, item, block=True, timeout=None):
        if self.items is None:
            if self.send_now is not None and item is not None and self.send_now(item):
                return
            self.items = collections.deque()
        self.items.append(item)
        self.unfinished += 1
        self.bytes += queued_size(item)
        if self.readable is not None:
            self.readable.set()
        if self.on_put is not None:
            self.on_put(item)
        if (
            len(self.items) > MAX_QUEUED_PACKETS or self.bytes > MAX_QUEUED_BYTES
        ) and self.on_overflow is not None:
            overflow, self.on_overflow = self.on_overflow, None  # once
            overflow()

    def get(self, block=True, timeout=None):
        if not self.items:
            if not block:
                raise gevent.queue.Empty
            self._wait_for_item(timeout)
        item = self.items.popleft()
        self.bytes -= queued_size(item)
        if not self.items:
            self.items, self.bytes = None, 0
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


def encode_frame(message) -> bytes:
    """The frame for what a writer takes off the queue: a :class:`FramedBytes` as is,
    an engine.io packet's encoding as a text or binary message."""
    if isinstance(message, FramedBytes):
        return message.data
    if isinstance(message, str):
        return codec.frame(codec.OP_TEXT, message.encode())
    return codec.frame(codec.OP_BINARY, message)


class DirectWrites:
    """Writing finished frames to a WebSocket's TCP connection, from the listener
    (:meth:`try_send`, never waits) or from a writer greenlet (:meth:`send`)."""

    __slots__ = ()
    writing = False  # a writer is inside a send (it may be blocked)
    closed = False

    def try_send(self, frame: bytes) -> bool:
        """Write ``frame`` now if the socket is idle; False if the queue must take it."""
        if self.writing or self.closed or self.eio_socket.queue.items:
            return False
        try:
            sent = self.tcp.send(frame, 0, 0.0)  # never waits
        except OSError:  # would block, or broken: the writer's path handles both
            return False
        if sent < len(frame):
            self.eio_socket.queue.put(FramedBytes(frame[sent:]))
        return True

    def send(self, message) -> None:
        """A writer's write of one queued item; may block (bounded by the socket's timeout)."""
        self.writing = True
        try:
            self.write(encode_frame(message))
        finally:
            self.writing = False

    def cut(self) -> None:
        """Drop the TCP connection as a failing network would: clients reconnect."""
        self.tcp.shutdown(socket.SHUT_RDWR)


class Drainer:
    """Sends what engine.io queues for one :class:`Connection`, from a greenlet
    that exists only while the queue holds something (engine.io's writer, on
    demand)."""

    __slots__ = ("sock", "connection", "greenlet", "done")

    def __init__(self, sock, connection: Connection):
        self.sock, self.connection, self.greenlet, self.done = sock, connection, None, False

    def wake(self, item=True):
        if item is None:  # engine.io is closing the socket
            self.connection.close_later()
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
                    self.connection.send(pkt.encode())
                except Exception:  # broken or too slow: engine.io's writer gives up too
                    self.finish()
        finally:
            self.greenlet = None

    def finish(self):
        self.done = True
        self.connection.close()


class Connection(DirectWrites):
    """A WebSocket that opened directly, after the handshake: engine.io's
    ``_websocket_handler`` (python-engineio 4.15) without a greenlet while idle.

    A libev watcher waits until the client sends; then a greenlet reads, handles
    the complete messages (engine.io's handlers may block) and ends.
    """

    __slots__ = (
        "eio_socket",
        "tcp",
        "watcher",
        "reader",
        "writing",
        "ending",
        "closed",
        "close_code",
        "deadline",
        "authenticated",
        "partial",
    )
    open_count = 0  # in this process, bounded together with the server's pool

    def __init__(self, eio_socket, tcp: socket.socket):
        self.eio_socket, self.tcp = eio_socket, tcp
        self.reader = None  # a codec.Reader while a frame or message is incomplete
        self.writing = self.ending = self.closed = False
        self.close_code, self.deadline = codec.NORMAL_CLOSURE, None
        self.authenticated, self.partial = False, None  # partial: the timer of one
        tcp.settimeout(WRITE_TIMEOUT_S)  # the Drainer's writes; reads happen only when readable
        drainer = Drainer(eio_socket, self)  # kept alive by the queue's on_put
        self.watcher = gevent.get_hub().loop.io(tcp.fileno(), 1)  # 1: readable
        Connection.open_count += 1
        seams.mark_websocket_open(eio_socket, self)
        queue = eio_socket.queue
        queue.send_now = self.send_now
        queue.on_put = drainer.wake
        queue.on_overflow = self.overflow
        drainer.wake()  # the OPEN packet, queued before the WebSocket was there
        self.watcher.start(self.on_readable)

    def send_now(self, packet) -> bool:
        """A packet engine.io sends while nothing is queued (the handshake's, acks,
        pings): written from here, without waking the drainer, if the socket takes it."""
        return self.try_send(encode_frame(packet.encode()))

    def on_readable(self):  # in the hub, which must not block
        self.watcher.stop()
        gevent.spawn(self.read)

    def read(self):
        server = self.eio_socket.server
        reader = self.reader
        try:
            if reader is None:
                reader = codec.Reader(self.message_limit(server))
            data = self.tcp.recv(READ_BYTES_MID_MESSAGE if self.reader else READ_BYTES)
            if not data:  # closed by the client
                return self.end(None)
            for opcode, payload in reader.feed(data):
                if self.ending:
                    break
                self.handle(opcode, payload)
        except codec.ProtocolError as exc:
            server.logger.info(
                '%s: WebSocket protocol error "%s", closing connection', self.eio_socket.sid, exc
            )
            self.end(exc.code)
        except Exception as exc:
            if not seams.closed(self.eio_socket):
                server.logger.info(
                    '%s: Unexpected error "%s", closing connection', self.eio_socket.sid, exc
                )
            self.end(None)
        finally:
            self.reader = None if reader is None or reader.idle or self.ending else reader
            self.time_partial()
            if not self.ending:
                self.watcher.start(self.on_readable)

    def message_limit(self, server) -> int:
        """``max_http_buffer_size``, or less until the socket's CONNECT is accepted."""
        if not self.authenticated:
            accepted = getattr(server, "taskbeam_authenticated", None)  # fastws.install
            self.authenticated = accepted is not None and accepted(self.eio_socket.sid)
        if self.authenticated:
            return server.max_http_buffer_size
        return min(server.max_http_buffer_size, PRE_AUTH_MAX_MESSAGE_BYTES)

    def time_partial(self) -> None:
        """A message left partial must be finished within PARTIAL_MESSAGE_TIMEOUT_S."""
        if self.reader is None:
            if self.partial is not None:
                self.partial.stop()
                self.partial = None
        elif self.partial is None:
            self.partial = gevent.get_hub().loop.timer(PARTIAL_MESSAGE_TIMEOUT_S)
            self.partial.start(gevent.spawn, self.too_slow)  # not in the hub: end may block

    def too_slow(self) -> None:
        if self.reader is None or self.ending:
            return
        self.eio_socket.server.logger.info(
            "%s: a message left unfinished for %.0f s, closing connection",
            self.eio_socket.sid,
            PARTIAL_MESSAGE_TIMEOUT_S,
        )
        self.reader = None  # what it held goes now
        self.time_partial()
        self.end(codec.POLICY_VIOLATION)

    def handle(self, opcode: int, payload) -> None:
        if opcode == codec.OP_TEXT or opcode == codec.OP_BINARY:
            self.receive(payload)
        elif opcode == codec.OP_PING:
            pong = codec.frame(codec.OP_PONG, payload)
            # In order with what is queued; a client that pings without reading
            # does not grow the queue past a few packets.
            if not self.try_send(pong) and self.eio_socket.queue.qsize() < MAX_QUEUED_PONGS:
                self.eio_socket.queue.put(FramedBytes(pong))
        elif opcode == codec.OP_CLOSE:
            self.end(codec.close_reply(payload[0]))
        # OP_PONG: nothing to do

    def receive(self, data) -> None:
        sock, server = self.eio_socket, self.eio_socket.server
        try:
            sock.receive(eio_packet.Packet(encoded_packet=data))
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            server.logger.info("Receive error -- socket is closed")
            self.end(None)
        except Exception:
            server.logger.exception("Unknown receive error")
            self.end(None)

    def write(self, data: bytes) -> None:
        self.tcp.sendall(data)

    def end(self, code: int | None) -> None:
        """The client closed or broke the protocol: engine.io closes the socket,
        then the drainer closes the connection after what is queued, with a close
        frame carrying ``code`` (None: an empty one)."""
        if self.ending:
            return
        self.ending, self.close_code = True, code
        self.watcher.stop()
        sock = self.eio_socket
        sock.queue.put(None)
        sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)

    def overflow(self) -> None:
        """The client reads too slowly for what it is sent: cut it now (it
        reconnects and resubscribes with ``after``)."""
        log.warning(
            "%s: %d packets (%d bytes) queued for a client that does not read; "
            "closing its connection",
            self.eio_socket.sid,
            self.eio_socket.queue.qsize(),
            self.eio_socket.queue.bytes,
        )
        self.close_code = codec.POLICY_VIOLATION
        self.ending = True
        gevent.spawn(self.close)  # not inside the send that overflowed; handlers may block

    def close_later(self) -> None:
        """engine.io closed the socket: what is queued may still go out, but the
        connection closes ``CLOSE_GRACE_S`` from now at the latest."""
        if self.deadline is None and not self.closed:
            self.deadline = gevent.get_hub().loop.timer(CLOSE_GRACE_S)
            self.deadline.start(gevent.spawn, self.close)  # not in the hub: close may block

    def close(self) -> None:
        """The end of the connection: after engine.io closed the socket and what
        was queued went out, when a write broke, or at the deadline."""
        if self.closed:
            return
        self.closed = self.ending = True
        Connection.open_count -= 1
        self.watcher.stop()
        if self.deadline is not None:
            self.deadline.stop()
        self.reader = None
        self.time_partial()
        sock = self.eio_socket
        try:
            self.tcp.send(codec.close_frame(self.close_code), 0, 0.0)  # a courtesy: never waits
        except OSError:
            pass
        blocked_writer = self.writing
        if blocked_writer:
            self.tcp.close()  # wakes the drainer blocked in sendall, with an error
        if not seams.closed(sock):  # a broken write: engine.io learns it here
            sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)
        seams.forget_socket(sock)
        if not blocked_writer:
            self.linger()

    def linger(self) -> None:
        """Close without a reset: half-close (FIN after every byte written), then read
        and drop what the client still sends until it closes too, ``LINGER_S`` at most.
        Closing with unread bytes would send a reset instead, and a reset makes the
        peer (Nginx) drop what it has not read yet: a refusal's CONNECT_ERROR, the
        last events before a server-side disconnect."""
        tcp = self.tcp
        try:
            tcp.shutdown(socket.SHUT_WR)
            give_up_at = time.monotonic() + LINGER_S
            while (left := give_up_at - time.monotonic()) > 0:
                tcp.settimeout(left)
                if not tcp.recv(READ_BYTES_MID_MESSAGE):
                    break
        except OSError:  # a timeout, or the client reset it first
            pass
        finally:
            tcp.close()


# fastws.install sets it: this process's engine.io answers a WebSocket open itself.
own_handshake = False
# The environ key under which Gunicorn's handler (taskbeam.gunicorn_worker) passes
# itself with a request that :func:`open_directly` answers.
HANDLER = "taskbeam.fastws.handler"
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


def opens_websocket(environ: dict) -> bool:
    """A request opening an engine.io 4 session with a WebSocket, which this module's
    handshake answers instead of gevent-websocket's (the same requests as engine.io's
    ``transport == upgrade_header == 'websocket'`` and ``handle_get_request``'s
    ``'upgrade' in connections``)."""
    if (
        not own_handshake
        or environ.get("REQUEST_METHOD") != "GET"
        or environ.get("HTTP_UPGRADE", "").lower() != "websocket"
        or "upgrade"
        not in (t.strip() for t in environ.get("HTTP_CONNECTION", "").lower().split(","))
    ):
        return False
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    return (
        query.get("EIO") == ["4"]
        and query.get("transport") == ["websocket"]
        and "sid" not in query
        and "j" not in query
    )


def accept_key(key: str) -> bytes | None:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (16 bytes in
    base64, RFC 6455 4.2.1), or None for a key that is not one."""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except ValueError:
        return None
    return base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())


def admitted(sock, handler) -> bool:
    """Whether one more connection fits the worker's connection limit (Gunicorn's
    pool of handlers plus the connections handed off); if it does, the handler's
    slot is freed, as the connection will not hold one."""
    pool = seams.server_pool(handler)
    if pool is None or pool.size is None:
        return True
    if Connection.open_count + len(pool) > pool.size:
        log.warning(
            "%d WebSockets open and %d requests in progress: refusing one more",
            Connection.open_count,
            len(pool),
        )
        return False
    seams.release_pool_slot(handler, gevent.getcurrent())
    return True


def open_directly(sock, handler, environ: dict, start_response) -> list:
    """The WebSocket handshake of a client opening with a WebSocket, as engine.io's
    ``Socket._upgrade_websocket`` (``sock`` was just made, its OPEN packet queued and
    python-socketio told of the session): one write carries the ``101`` answer and
    what is queued, then the connection is a :class:`Connection`. Versions other
    than 13 (RFC 6455) are refused as gevent-websocket refuses a bad request."""
    accept = accept_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip())
    if (
        accept is None
        or environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13"
        or environ.get("SERVER_PROTOCOL") != "HTTP/1.1"
    ):
        sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_ERROR)
        start_response("400 Bad Request", [("Sec-WebSocket-Version", "13")])
        return [b"Bad WebSocket handshake"]
    if not admitted(sock, handler):
        sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)
        start_response("503 Service Unavailable", [("Retry-After", "1")])
        return []
    queue, frames = sock.queue, []
    while queue.items:  # the OPEN packet
        frames.append(encode_frame(queue.get_nowait().encode()))
        queue.task_done()
    # python-socketio keeps the environ for the session: not pywsgi's reader.
    environ["wsgi.input"] = io.BytesIO()
    start_response("101 Switching Protocols", [])  # for pywsgi's records; not written
    tcp = seams.take_connection(handler)
    tcp.settimeout(WRITE_TIMEOUT_S)
    try:
        tcp.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
            + b"".join(frames)
        )
    except OSError:
        tcp.close()
        sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)
        return []
    Connection(sock, tcp)
    return []


def hand_off(sock, environ: dict, websocket) -> list:
    """Take a WebSocket that just opened from gevent-websocket and pywsgi.

    Runs as the WSGI app's body in the connection's pywsgi handler greenlet,
    which then ends. The client sends no frame before it has the handshake's
    answer (RFC 6455 4.1), so pywsgi's read buffer holds none. ``environ`` is
    the request's, which python-socketio keeps for the session: it must not keep
    pywsgi's reader (and so its descriptor) or the WebSocket alive.
    """
    environ["wsgi.input"], environ["wsgi.websocket"] = io.BytesIO(), None
    if not admitted(sock, seams.pywsgi_handler(websocket)):
        sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)
        return []
    Connection(sock, seams.take_from_pywsgi(websocket))
    return []


class UpgradedWebSocket(DirectWrites, WebSocketWSGI):
    """engine.io's gevent-websocket wrapper, also accepting direct writes.

    A socket that is not connected yet (the client opened with a WebSocket) is
    handed off to a :class:`Connection`; one upgrading from long-polling keeps
    engine.io's handler, and the wrapper is its ``direct`` writer once upgraded.
    """

    def __call__(self, environ, start_response):
        self.eio_socket = seams.eio_socket_of(self.app)
        # python-socketio keeps the environ as long as the session: not the handler.
        handler = environ.pop(HANDLER, None)
        if handler is not None:  # opens_websocket: no gevent-websocket handshake was made
            return open_directly(self.eio_socket, handler, environ, start_response)
        if not seams.connected(self.eio_socket):
            self.app = functools.partial(hand_off, self.eio_socket, environ)
            return super().__call__(environ, start_response)
        self.eio_socket.direct = self
        try:
            return super().__call__(environ, start_response)
        finally:
            self.eio_socket.direct = None

    def try_send(self, frame: bytes) -> bool:
        # engine.io holds packets while the upgrade is under way.
        return seams.upgraded(self.eio_socket) and DirectWrites.try_send(self, frame)

    def send(self, message) -> None:  # engine.io's writer greenlet
        DirectWrites.send(self, message)

    def write(self, data: bytes) -> None:
        seams.websocket_write(self, data)

    @property
    def tcp(self) -> socket.socket:
        return seams.websocket_tcp(self)


def deliver(manager, message: dict) -> int | None:
    """Forward an ``emit`` from the message queue to this process's recipients;
    the number of recipients, or None for what is left to python-socketio
    (acknowledgement callbacks, binary payloads).

    Same addressing as python-socketio's ``Manager.emit``.
    """
    if message.get("callback") is not None or message.get("binary"):
        return None
    data = message.get("data")
    args = list(data) if isinstance(data, list) else [data]
    if args == [None]:
        args = []
    namespace = message.get("namespace") or "/"
    skip = message.get("skip_sid")
    skip = skip if isinstance(skip, list) else [skip]
    server = manager.server
    if namespace == "/":  # what Packet.encode() writes, less its per-call checks
        encoded = str(sio_packet.EVENT) + server.packet_class.json.dumps(
            [message["event"]] + args, separators=(",", ":")
        )
    else:
        encoded = server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[message["event"]] + args
        ).encode()
    return deliver_packet(manager, message.get("room"), encoded, namespace, skip)


def deliver_packet(manager, room, packet: str, namespace="/", skip=(None,)) -> int:
    """Send an encoded Socket.IO packet to ``room``'s members here, but ``skip``;
    how many."""
    frame = queued = None
    recipients = 0
    server = manager.server
    sockets = seams.eio_sockets(server)
    for sid, eio_sid in manager.get_participants(namespace, room):
        if sid in skip:
            continue
        recipients += 1
        direct = getattr(sockets.get(eio_sid), "direct", None)
        if direct is not None:
            frame = frame or codec.text_frame(("4" + packet).encode())
            if direct.try_send(frame):
                continue
        queued = queued or eio_packet.Packet(eio_packet.MESSAGE, packet)
        seams.send_eio_packet(server, eio_sid, queued)
    return recipients

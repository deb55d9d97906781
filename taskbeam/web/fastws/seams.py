"""Every private attribute of another library that the fast transport uses.

This is the only module of Taskbeam that reads or writes an underscored or
undocumented attribute of python-engineio, python-socketio, gevent-websocket,
gevent's pywsgi, redis-py or wsproto. Each use below names the version it was
read from (``READ_FROM``). At start-up :func:`problems` compares the installed
versions and looks for every attribute; if anything differs the app runs stock
python-engineio/python-socketio instead (``taskbeam.web.fastws.install``).
It also checks the layout of python-socketio's message-queue message, which the
worker writes and the fast listener cuts (``protocol.mq_emit_message``).

When you bump one of these libraries: read the lines named here in its new
source, adjust, then update ``READ_FROM``. ``tests/unit/test_fastws_contract.py``
runs the transport against the real libraries.
"""

from __future__ import annotations

import importlib.metadata
import socket
import time
from typing import Any

import engineio
import engineio.packet
import engineio.socket
import gevent.pywsgi
import socketio
from wsproto.frame_protocol import FrameProtocol

import redis

from ... import protocol

READ_FROM = {
    "python-engineio": "4.15.1",
    "python-socketio": "5.18.1",
    "gevent-websocket": "0.10.1",
    "gevent": "26.9.0",
    "redis": "8.1.0",
    "wsproto": "1.3.2",
}


# python-engineio 4.15.1 -------------------------------------------------------


def install_eio_classes(eio: engineio.Server, websocket_class: type, queue_class: type) -> None:
    """``Server._async``: the async driver's table; ``websocket`` wraps each
    WebSocket request (called with the Socket's bound ``_websocket_handler``),
    ``queue`` is every Socket's packet queue (``create_queue``)."""
    eio._async = dict(eio._async, websocket=websocket_class, queue=queue_class)


def eio_socket(eio: engineio.Server, sid: str) -> engineio.socket.Socket | None:
    """``Server.sockets``: engine.io sid -> Socket."""
    return eio.sockets.get(sid)


def eio_socket_of(handler: Any) -> engineio.socket.Socket:
    """The engine.io Socket whose ``_websocket_handler`` the wrapper was given."""
    return handler.__self__


def replace_schedule_ping(sock: engineio.socket.Socket, schedule) -> None:
    """``Socket.schedule_ping``: called after the handshake and on each PONG."""
    sock.schedule_ping = schedule


def start_ping_cycle(sock: engineio.socket.Socket) -> bool:
    """``schedule_ping``'s rule: a new cycle only once the last one completed
    (``last_ping`` set by the PING, cleared here)."""
    if sock.last_ping:
        sock.last_ping = None
        return True
    return False


def send_ping(sock: engineio.socket.Socket) -> None:
    """``_send_ping`` after its sleep: PING unless ``closing``/``closed``, with
    ``last_ping`` for ``check_ping_timeout``."""
    if not sock.closing and not sock.closed:
        sock.last_ping = time.time()
        sock.send(engineio.packet.Packet(engineio.packet.PING))


def mark_websocket_open(sock: engineio.socket.Socket, direct) -> None:
    """What ``_websocket_handler`` sets for a WebSocket that opened directly
    (``connected``, ``upgraded``), and our writer on the socket (``direct``)."""
    sock.connected = sock.upgraded = True
    sock.direct = direct


def connected(sock: engineio.socket.Socket) -> bool:
    """``Socket.connected``: False until a transport has carried the OPEN packet,
    so a WebSocket request on such a socket is the client's first transport."""
    return sock.connected


def closed(sock: engineio.socket.Socket) -> bool:
    """``Socket.closed``: set by ``Socket.close``."""
    return sock.closed


def eio_handler(eio: engineio.Server, event: str):
    """``Server.handlers``: what ``on(event)`` registered (``on`` replaces it)."""
    return eio.handlers.get(event)


def upgraded(sock: engineio.socket.Socket) -> bool:
    """``Socket.upgraded``: set once a long-polling client finished its upgrade."""
    return sock.upgraded


def forget_socket(sock: engineio.socket.Socket) -> None:
    """``Server.sockets`` without ``sock`` (what ``_websocket_handler``'s end
    and the service task do for closed sockets), and no writer on it."""
    if sock.server.sockets.get(sock.sid) is sock:
        del sock.server.sockets[sock.sid]
    sock.direct = None


# python-socketio 5.18.1 ------------------------------------------------------


def eio_sockets(sio_server: socketio.Server) -> dict:
    """``engineio.Server.sockets``: engine.io sid -> Socket."""
    return sio_server.eio.sockets


def start_listener_now(sio_server: socketio.Server) -> None:
    """``Server.manager_initialized``: python-socketio starts the client manager
    (and so its message-queue listener) at the first connection; here at boot,
    so that the heartbeat can be heard before any client comes."""
    if not sio_server.manager_initialized:
        sio_server.manager_initialized = True
        sio_server.manager.initialize()


def rooms(manager: socketio.Manager) -> dict:
    """``BaseManager.rooms``: namespace -> room -> {sid: eio_sid}."""
    return manager.rooms


def send_eio_packet(sio_server: socketio.Server, eio_sid: str, pkt) -> None:
    """``Server._send_eio_packet``: what ``Manager.emit`` calls per recipient."""
    sio_server._send_eio_packet(eio_sid, pkt)


class PubSubHooks(socketio.RedisManager):
    """The two python-socketio methods the fast listener replaces:
    ``PubSubManager._listen`` (the generator ``_thread`` reads messages from)
    and ``_handle_emit`` (called by ``_thread`` for each ``emit`` message).
    Subclasses implement :meth:`listen` and :meth:`handle_emit`."""

    def _listen(self):
        return self.listen()

    def _handle_emit(self, message):
        if not self.handle_emit(message):
            super()._handle_emit(message)

    def listen(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def handle_emit(self, message) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class RoomsBySid:
    """A client's rooms without a scan of every room.

    python-socketio's ``BaseManager.basic_disconnect`` and ``get_rooms`` find a
    client's rooms by scanning every room of the namespace (and each client has a
    room of its own): closing 10,000 sockets held a web process at 100 % of a core
    for about 25 s. This keeps ``sid_rooms`` (namespace -> sid -> rooms) beside
    ``BaseManager.rooms`` and replaces both scans; ``basic_disconnect`` is
    otherwise 5.18.1's (``callbacks``, ``pending_connect``, ``pending_disconnect``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sid_rooms = {}

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.sid_rooms.setdefault(namespace, {}).setdefault(sid, set()).add(room)

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        by_sid = self.sid_rooms.get(namespace, {})
        rooms = by_sid.get(sid)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del by_sid[sid]
                if not by_sid:
                    del self.sid_rooms[namespace]

    def basic_disconnect(self, sid, namespace, **kwargs):
        if namespace not in self.rooms:
            return
        for room in list(self.sid_rooms.get(namespace, {}).get(sid, ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    def get_rooms(self, sid, namespace):
        return [room for room in self.sid_rooms.get(namespace, {}).get(sid, ()) if room is not None]


# python-socketio 5.18.1's message-queue message -----------------------------
#
# The layout of what ``PubSubManager.emit`` publishes (its ``message`` dict, which
# ``RedisManager._publish`` json.dumps) is protocol.mq_emit_message: the worker
# writes it (the store's Lua, emitter.StockEnvelope) without importing the web
# package, and the fast listener cuts task events out of it (listener.py).
# :func:`problems` checks it against what the installed python-socketio writes.


def published_emit(manager: socketio.RedisManager, event: str, data: Any, room: str) -> str:
    """What ``manager.emit(event, data, room=room)`` publishes, captured, nothing sent:
    ``RedisManager._publish`` calls ``self.redis.publish(self.channel, text)`` once
    ``self.connected``."""
    captured: list[str] = []

    class Capture:
        def publish(self, channel: str, text: str) -> None:
            captured.append(text)

    saved = manager.redis, manager.connected
    manager.redis, manager.connected = Capture(), True
    try:
        manager.emit(event, data, room=room)
    finally:
        manager.redis, manager.connected = saved
    return captured[0]


def emit_layout_holds() -> bool:
    """protocol.mq_emit_message is, byte for byte, what python-socketio publishes."""
    manager = socketio.RedisManager("redis://unused", write_only=True)
    event = {"task_id": "t", "seq": 2, "message": 'a/"\u00e9\n', "progress": 12.5}
    expected = protocol.mq_emit_message(
        protocol.TASK_UPDATE_EVENT, event, "task:t", manager.host_id
    )
    return published_emit(manager, protocol.TASK_UPDATE_EVENT, event, "task:t") == expected


# gevent-websocket 0.10.1 and gevent 26.9.0's pywsgi --------------------------


def websocket_tcp(wrapper: Any) -> socket.socket:
    """The connection's gevent socket under engine.io's WebSocketWSGI wrapper:
    ``wrapper._sock`` (gevent-websocket's WebSocket), ``.stream.handler.socket``."""
    return wrapper._sock.stream.handler.socket


def websocket_write(wrapper: Any, data: bytes) -> None:
    """Raw bytes to gevent-websocket's stream (``WebSocket.stream.write``)."""
    wrapper._sock.stream.write(data)


def pywsgi_handler(wrapper: Any) -> gevent.pywsgi.WSGIHandler:
    """The pywsgi handler serving the WebSocket's request (``WebSocket.handler``)."""
    return wrapper._sock.handler


def take_from_pywsgi(wrapper: Any) -> socket.socket:
    """:func:`take_connection` of a connection gevent-websocket opened, whose
    WebSocket's ``closed`` flag then stops its writes."""
    wrapper._sock.closed = True
    return take_connection(pywsgi_handler(wrapper))


def take_connection(handler: gevent.pywsgi.WSGIHandler) -> socket.socket:
    """A duplicate of the connection's descriptor, after which pywsgi does not
    touch the connection again: its handler with ``socket = None`` and
    ``close_connection`` neither drains nor closes it, nor writes a response, and
    its server closes only its own descriptor when the handler ends."""
    tcp = handler.socket.dup()
    handler.socket, handler.close_connection = None, True
    return tcp


def close_after_answer(handler: gevent.pywsgi.WSGIHandler) -> None:
    """pywsgi's ``close_connection``: no next request on this connection."""
    handler.close_connection = True


def connection_taken(handler: gevent.pywsgi.WSGIHandler) -> bool:
    """Whether :func:`take_connection` took the handler's connection."""
    return handler.socket is None


def release_pool_slot(handler: gevent.pywsgi.WSGIHandler, greenlet) -> None:
    """Gunicorn's pool (``handler.server.pool``, a gevent Pool) frees the
    handler greenlet's slot now rather than when it hears the greenlet ended."""
    handler.server.pool.discard(greenlet)


def server_pool(handler: gevent.pywsgi.WSGIHandler):
    return getattr(handler.server, "pool", None)


def small_read_buffer(handler: gevent.pywsgi.WSGIHandler, sock: socket.socket, size: int) -> None:
    """pywsgi's ``WSGIHandler.rfile`` (8 KB by default) replaced by a smaller one."""
    handler.rfile.close()  # the buffer; the socket stays open
    handler.rfile = sock.makefile("rb", size)


# redis-py 8.1.0 --------------------------------------------------------------


def redis_socket(connection: redis.Connection) -> socket.socket | None:
    """``Connection._sock``: the listener reads its subscribed socket itself."""
    return connection._sock


# wsproto 1.3.2 ---------------------------------------------------------------


def parser_idle(parser: FrameProtocol) -> bool:
    """True when a wsproto parser holds no partial frame or message, so it can be
    dropped and a new one started for the next read (``_frame_decoder.buffer``,
    ``.header``; ``_message_decoder.opcode``)."""
    frames = parser._frame_decoder
    return (
        not len(frames.buffer) and frames.header is None and parser._message_decoder.opcode is None
    )


# The start-up check -----------------------------------------------------------


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def problems() -> list[str]:
    """What differs from the versions and attributes this module was written
    against; empty when the fast transport can run."""
    found = []
    for name, version in READ_FROM.items():
        installed = _installed(name)
        if installed != version:
            found.append(f"{name} {installed or 'missing'} (read from {version})")
    try:
        import geventwebsocket.websocket as gws

        sio = socketio.Server(async_mode="gevent")
        eio = sio.eio
        sock = engineio.socket.Socket(eio, "probe")
        flags = ("connected", "upgraded", "closing", "closed", "last_ping", "queue")
        checks = {
            "engineio.Server.sockets/handlers": isinstance(eio.sockets, dict)
            and isinstance(eio.handlers, dict),
            "engineio.Socket state flags": all(hasattr(sock, name) for name in flags),
            "socketio.Server.manager_initialized": sio.manager_initialized is False,
            "socketio BaseManager.rooms/callbacks/pending_connect/pending_disconnect": all(
                isinstance(getattr(sio.manager, name), dict)
                for name in ("rooms", "callbacks", "pending_connect", "pending_disconnect")
            ),
            "socketio BaseManager.basic_enter_room/basic_leave_room/basic_disconnect": all(
                callable(getattr(socketio.Manager, name, None))
                for name in ("basic_enter_room", "basic_leave_room", "basic_disconnect")
            ),
            "engineio.Server._async": "websocket" in eio._async and "queue" in eio._async,
            "engineio.Socket._websocket_handler": callable(sock._websocket_handler),
            "engineio.Socket.schedule_ping": callable(sock.schedule_ping)
            and sock.last_ping is not None,
            "socketio.Server._send_eio_packet": callable(socketio.Server._send_eio_packet),
            "socketio PubSubManager.emit's message (protocol.mq_emit_message)": (
                emit_layout_holds()
            ),
            "socketio.PubSubManager._listen/_handle_emit/_thread": all(
                callable(getattr(socketio.PubSubManager, name, None))
                for name in ("_listen", "_handle_emit", "_thread")
            ),
            "geventwebsocket WebSocket.stream/handler/closed": all(
                name in gws.WebSocket.__slots__ for name in ("stream", "handler", "closed")
            ),
            "pywsgi WSGIHandler.socket/close_connection/rfile": hasattr(
                gevent.pywsgi.WSGIHandler, "close_connection"
            ),
            "redis Connection._sock": hasattr(redis.Connection(), "_sock"),
            "wsproto FrameProtocol._frame_decoder/_message_decoder": parser_idle(
                FrameProtocol(client=False, extensions=[])
            ),
        }
    except Exception as exc:  # an attribute gone or renamed
        return found + [f"{type(exc).__name__}: {exc}"]
    return found + [name for name, ok in checks.items() if not ok]

"""The fast WebSocket transport: one part, with one switch.

Interface (all the app uses):

- :func:`in_use` -- whether the app runs it: ``WEB_FAST_TRANSPORT``
  (``Settings.web_fast_transport``, default 1; 0 runs stock
  python-engineio/python-socketio with no patching at all) and
  :func:`libraries_supported`.
- :func:`libraries_supported` -- the installed libraries are the versions and
  have the attributes :mod:`.seams` was written against; otherwise one warning
  line, and the app runs stock.
- :class:`FastRedisManager` -- the message-queue listener (python-socketio's
  Redis manager, a faster read loop) that delivers through :func:`deliver`.
- :func:`install` -- engine.io's WebSocket transport and pings, on a Socket.IO server.

Inside: :mod:`.codec` (frames; wsproto parses what clients send),
:mod:`.transport` (the WebSocket-only handshake, the connection, its queue and
drainer, the direct write path), :mod:`.pings` (heartbeat timers),
:mod:`.listener`, :mod:`.admission` (new connections past ``WEB_CONNECTS_PER_S``
refused with a quick 503, from Gunicorn's handler), and :mod:`.seams`, the only module
touching other libraries' private attributes.
"""

from __future__ import annotations

import functools
import logging

from ... import config

log = logging.getLogger(__name__)


def in_use(settings: config.Settings) -> bool:
    """Whether an app with ``settings`` runs the fast transport."""
    if not settings.web_fast_transport:
        log.info("WEB_FAST_TRANSPORT=0: stock python-engineio/python-socketio transport")
        return False
    return libraries_supported()


@functools.cache
def libraries_supported() -> bool:
    """Whether the installed libraries are those :mod:`.seams` was read from (checked once)."""
    try:
        from . import seams

        found = seams.problems()
    except Exception as exc:  # an import of a renamed module
        found = [f"{type(exc).__name__}: {exc}"]
    if found:
        log.warning(
            "fast WebSocket transport off, running stock python-engineio/socketio: %s",
            "; ".join(found),
        )
        return False
    return True


def install(sio_server) -> None:
    """Make ``sio_server``'s engine.io server use this transport for its
    WebSockets, a bounded queue per socket and timer pings."""
    import gevent

    from . import pings, seams, transport

    eio = sio_server.eio
    seams.install_eio_classes(eio, transport.UpgradedWebSocket, transport.WakingQueue)
    connect = seams.eio_handler(eio, "connect")

    def on_connect(sid, *args):
        # engine.io registers a socket, triggers `connect`, then schedules the first ping.
        sock = seams.eio_socket(eio, sid)
        if sock is not None:
            seams.replace_schedule_ping(sock, pings.TimerPing(eio, sock).schedule)
            # A long-polling or upgraded socket past its queue's bound: engine.io
            # closes it, in a greenlet of its own (not inside the send that overflowed;
            # its disconnect handlers may block).
            sock.queue.on_overflow = functools.partial(
                gevent.spawn, sock.close, wait=False, abort=True, reason=eio.reason.TRANSPORT_ERROR
            )
        return connect(sid, *args) if connect is not None else None

    eio.on("connect", on_connect)
    transport.own_handshake = True  # Gunicorn's handler asks (gunicorn_worker.Handler)
    # Until this is true a socket's messages are capped small (transport.Connection).
    eio.taskbeam_authenticated = lambda eio_sid: (
        sio_server.manager.sid_from_eio_sid(eio_sid, "/") is not None
    )


def __getattr__(name):
    if name == "FastRedisManager":
        from .listener import FastRedisManager

        return FastRedisManager
    if name == "deliver":
        from .transport import deliver

        return deliver
    raise AttributeError(name)


def cut_or_close(eio, eio_sid: str) -> None:
    """End a client's connection so that it reconnects (no CLOSE packet): the
    fast path drops the TCP connection as a failing network would; stock
    engine.io aborts the socket."""
    from . import seams

    sock = seams.eio_socket(eio, eio_sid)
    if sock is None:
        return
    direct = getattr(sock, "direct", None)
    if direct is not None:
        direct.cut()
    else:
        sock.close(wait=False, abort=True)

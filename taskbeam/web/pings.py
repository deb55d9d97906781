"""engine.io's heartbeat on a libev timer instead of a sleeping greenlet per socket.

python-engineio schedules each ping by starting a background task that sleeps
through the ping interval, so every idle socket holds a greenlet for its whole
life: with its saved stack, about 10 KB of RSS per socket at 10,000 sockets.
Here a timer does the waiting and a greenlet exists only while the ping is being
sent. Ping timeouts are still enforced by engine.io (its service task and
``check_ping_timeout``).
"""
import time

import gevent
from engineio import packet as eio_packet


class TimerPing:
    """``schedule_ping`` for one engine.io socket, same rules as engine.io's own."""

    __slots__ = ("eio", "sock", "timer")

    def __init__(self, eio, sock):
        self.eio, self.sock, self.timer = eio, sock, None

    def schedule(self):
        # Only after the previous cycle completed (the client's PONG clears it).
        if self.sock.last_ping:
            self.sock.last_ping = None
            self.timer = gevent.get_hub().loop.timer(self.eio.ping_interval)
            # send may block, so not in the hub; update: count from now, not the loop's last turn
            self.timer.start(gevent.spawn, self.send, update=True)

    def send(self):
        sock = self.sock
        if not sock.closing and not sock.closed:
            sock.last_ping = time.time()
            sock.send(eio_packet.Packet(eio_packet.PING))


def install(eio):
    """Give every socket ``eio`` accepts from now on a :class:`TimerPing`.

    engine.io registers a socket, then triggers ``connect``, then schedules the
    first ping, so wrapping the ``connect`` handler is early enough.
    """
    connect = eio.handlers.get("connect")

    def on_connect(sid, *args):
        sock = eio.sockets.get(sid)
        if sock is not None:
            sock.schedule_ping = TimerPing(eio, sock).schedule
        return connect(sid, *args) if connect is not None else None

    eio.on("connect", on_connect)

"""engine.io's heartbeat on a libev timer instead of a sleeping greenlet per socket.

python-engineio schedules each ping by starting a background task that sleeps
through the ping interval, so every idle socket holds a greenlet for its whole
life: with its saved stack, about 10 KB of RSS per socket at 10,000 sockets.
Here a timer does the waiting and a greenlet exists only while the ping is being
sent. Ping timeouts are still enforced by engine.io (its service task and
``check_ping_timeout``).
"""

from __future__ import annotations

import time

import gevent

from . import seams


class TimerPing:
    """``schedule_ping`` for one engine.io socket, same rules as engine.io's own."""

    __slots__ = ("eio", "sock", "timer")

    def __init__(self, eio, sock):
        self.eio, self.sock, self.timer = eio, sock, None

    def schedule(self) -> None:
        if seams.start_ping_cycle(self.sock):
            # Due on a grid (a tenth of the interval, at most 1 s): the pings of many
            # sockets, and so their pongs, come in one wake-up of the process, not one each.
            grid = min(self.eio.ping_interval / 10, 1.0)
            delay = self.eio.ping_interval + (-time.monotonic() % grid)
            self.timer = gevent.get_hub().loop.timer(delay)
            # send may block, so not in the hub; update: count from now, not the loop's last turn
            self.timer.start(gevent.spawn, self.send, update=True)

    def send(self) -> None:
        seams.send_ping(self.sock)

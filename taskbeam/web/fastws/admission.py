"""Admission control: new Socket.IO connections past a rate get a quick refusal.

After a web restart every open page reconnects within its reconnection delay:
thousands of handshakes at once, each ~1-2 ms of the one core this process
has. Taken all together they starve live events and the health check for
seconds (an orchestrator may then kill a web that works, and the storm starts
again). Past ``WEB_CONNECTS_PER_S`` a new engine.io session (a request under
``/socket.io/`` without ``sid``) is answered at once, before the WebSocket
handshake, engine.io or Flask see it: ``503`` with ``Retry-After`` and the
contract's JSON error. Socket.IO clients take it as a failed attempt and retry
after their own backoff (python-socketio's client and socket.io-client alike:
1 s doubling up to 5 s, with jitter); requests of connected sessions, the
API and the health checks are never counted or refused.

Gunicorn's handler (``taskbeam.gunicorn_worker.Handler``) asks :func:`refusal`
for each request; only public pywsgi/WSGI surfaces are used.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

SOCKETIO_PREFIX = "/socket.io/"


class Gate:
    """A token bucket of connects: ``rate_per_s`` a second, a second's worth at once.

    :param rate_per_s: new connections admitted a second; 0 admits all.
    """

    __slots__ = ("rate", "tokens", "at", "clock", "refused")

    def __init__(self, rate_per_s: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.clock = rate_per_s, clock
        self.tokens, self.at = float(rate_per_s), clock()
        self.refused = 0  # connections refused so far (the metrics read it)

    def admit(self) -> float | None:
        """Take one connect: None if admitted, else the seconds until one would be."""
        if self.rate <= 0:
            return None
        now = self.clock()
        self.tokens = min(float(self.rate), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        self.refused += 1
        return (1 - self.tokens) / self.rate


gate: Gate | None = None  # this process's, set by configure()


def configure(rate_per_s: int) -> Gate:
    """Admit at most ``rate_per_s`` new connections a second in this process (0: all)."""
    global gate
    gate = Gate(rate_per_s)
    return gate


def new_session(environ: dict) -> bool:
    """A request that would open an engine.io session (not one of an open session's)."""
    return environ.get("PATH_INFO", "").startswith(SOCKETIO_PREFIX) and "sid=" not in (
        environ.get("QUERY_STRING") or ""
    )


def refusal(environ: dict):
    """A WSGI app answering the refusal if ``environ``'s connect is past the rate, or None."""
    if gate is None or not new_session(environ):
        return None
    wait = gate.admit()
    if wait is None:
        return None
    retry_after = str(max(1, math.ceil(wait)))
    body = json.dumps(
        {
            "error": {
                "code": "busy",
                "message": "Too many connections at once; retry in a moment.",
            }
        }
    ).encode()

    def refuse(environ, start_response):
        start_response(
            "503 Service Unavailable",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Retry-After", retry_after),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    return refuse

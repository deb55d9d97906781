"""Names and shapes shared by web and worker, defined once (see docs/api.md).

Pure functions only: no Redis, no Flask, no Celery, so both sides import it
cheaply and the unit tests cover it without a broker.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_STATES = frozenset((SUCCEEDED, FAILED, CANCELLED))

TASK_UPDATE_EVENT = "task_update"

# Events per page of GET /events and of the subscribe ack: a 10,000-event history
# cost ~45 ms of CPU and 1.3 MB per unpaged read.
MAX_EVENTS_PAGE = 500
MAX_CHILDREN_PAGE = 100  # GET /api/tasks/<id>/children
# Digits of an `after` seq the API and the subscribe handler accept.
MAX_SEQ_DIGITS = 18


# python-socketio's message-queue message for an emit, as python-socketio 5.18.1
# writes it (PubSubManager.emit's dict, json.dumps'd by RedisManager._publish). The
# worker writes it (the store's Lua, with these separators; emitter.StockEnvelope)
# and the fast listener cuts task events out of it (web/fastws/listener.py). It is
# here because the worker never imports the web package; taskbeam.web.fastws.seams
# checks it against the installed python-socketio when a web process starts.
MQ_JSON_SEPARATORS = (", ", ": ")  # json.dumps' own


def mq_emit_message(event: str, data: Any, room: str, host_id: str, namespace: str = "/") -> str:
    """The text python-socketio publishes for ``emit(event, data, to=room)`` from the
    process ``host_id``: no callback, no client skipped, no binary data."""
    message = {
        "method": "emit",
        "event": event,
        "data": [data],
        "binary": False,
        "namespace": namespace,
        "room": room,
        "skip_sid": None,
        "callback": None,
        "host_id": host_id,
    }
    return json.dumps(message, separators=MQ_JSON_SEPARATORS)


# The export's file formats and their media types; the file of one run of a task.
EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "csv.gz": "application/gzip"}


def export_file_name(task_id: str, run: str, fmt: str) -> str:
    """The finished file of one run of a task; built from ids only, never user input.

    Each run has its own file: a run that was frozen and handed over can finish
    writing and renaming, but only the file of the run whose terminal event the
    store accepted is ever served (see ``download`` in the web API).
    """
    return f"{task_id}.{run}.{fmt}"


def task_room(task_id: str) -> str:
    """The Socket.IO room whose members receive one task's events."""
    return f"task:{task_id}"


def owner_id(kind: str, principal: str) -> str:
    """The task owner for a user: stable, fixed-length, safe inside a Redis key."""
    digest = hashlib.sha256(f"{kind}\0{principal}".encode()).hexdigest()[:32]
    return f"u-{digest}"


def owner_room(owner: str) -> str:
    """The Socket.IO room of every socket of one owner (tasks follow the user)."""
    return f"owner:{owner}"


def room_channel(channel: str, room: str) -> str:
    """The message-queue channel of one room's events (the store publishes task
    events there; a web process subscribes to the rooms it holds)."""
    return f"{channel}#{room}"


def iso_utc(ts: float) -> str:
    """Unix seconds → ISO 8601 UTC with a trailing Z, as the contract says."""
    stamp = datetime.fromtimestamp(ts, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def percent(done: float, total: float) -> float:
    """Progress in percent, clamped to 0..100 and rounded to 0.1."""
    if total <= 0:
        return 100.0
    return round(min(max(done / total, 0.0), 1.0) * 100.0, 1)


def failed(code: str, message: str) -> dict[str, Any]:
    """The fields of a ``failed`` terminal event with its ``{"code", "message"}`` error."""
    return {"state": FAILED, "message": message, "error": {"code": code, "message": message}}


class Coalescer:
    """Decides which progress reports become events.

    Two consecutive events with the same state and progress below 100 are at
    least ``window_s`` apart; a state change or 100 % always passes. ``clock`` is
    injected so the rule is testable without waiting.
    """

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.clock = clock
        self._last_at: float | None = None
        self._last_state: str | None = None

    def admit(self, state: str, progress: float) -> bool:
        now = self.clock()
        due = (
            self._last_at is None
            or state != self._last_state
            or progress >= 100
            or now - self._last_at >= self.window_s
        )
        if due:
            self._last_at, self._last_state = now, state
        return due

    def note(self, state: str) -> None:
        """Record an event sent outside ``admit`` (e.g. a framework state change)."""
        self._last_at, self._last_state = self.clock(), state


# Task ids are secrets.token_urlsafe(12): exactly 16 URL-safe characters. Anything
# else is refused before it reaches a Redis key (e.g. "<id>:events" would name the stream).
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16}")


def valid_task_id(value: object) -> bool:
    """True if ``value`` has the shape of an id ``store.new_task_id`` makes."""
    return isinstance(value, str) and TASK_ID_PATTERN.fullmatch(value) is not None

"""Names and shapes shared by web and worker, defined once (see docs/api.md).

Pure functions only: no Redis, no Flask, no Celery, so both sides import it
cheaply and the unit tests cover it without a broker.
"""

import hashlib
import re
from datetime import UTC, datetime

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_STATES = frozenset((SUCCEEDED, FAILED, CANCELLED))

TASK_UPDATE_EVENT = "task_update"


def task_room(task_id):
    """The Socket.IO room whose members receive one task's events."""
    return f"task:{task_id}"


def owner_id(kind, principal):
    """The task owner for a user: stable, fixed-length, safe inside a Redis key."""
    digest = hashlib.sha256(f"{kind}\0{principal}".encode()).hexdigest()[:32]
    return f"u-{digest}"


def owner_room(owner):
    """The Socket.IO room of every socket of one owner (tasks follow the user)."""
    return f"owner:{owner}"


def room_channel(channel, room):
    """The message-queue channel of one room's events (the store publishes task
    events there; a web process subscribes to the rooms it holds)."""
    return f"{channel}#{room}"


def iso_utc(ts):
    """Unix seconds → ISO 8601 UTC with a trailing Z, as the contract says."""
    stamp = datetime.fromtimestamp(ts, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def percent(done, total):
    """Progress in percent, clamped to 0..100 and rounded to 0.1."""
    if total <= 0:
        return 100.0
    return round(min(max(done / total, 0.0), 1.0) * 100.0, 1)


class Coalescer:
    """Decides which progress reports become events.

    Two consecutive events with the same state and progress below 100 are at
    least ``window_s`` apart; a state change or 100 % always passes. ``clock`` is
    injected so the rule is testable without waiting.
    """

    def __init__(self, window_s, clock):
        self.window_s = window_s
        self.clock = clock
        self._last_at = None
        self._last_state = None

    def admit(self, state, progress):
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

    def note(self, state):
        """Record an event sent outside ``admit`` (e.g. a framework state change)."""
        self._last_at, self._last_state = self.clock(), state


# Task ids are secrets.token_urlsafe(12): exactly 16 URL-safe characters. Anything
# else is refused before it reaches a Redis key (e.g. "<id>:events" would name the stream).
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16}")


def valid_task_id(value):
    """True if ``value`` has the shape of an id ``store.new_task_id`` makes."""
    return isinstance(value, str) and TASK_ID_PATTERN.fullmatch(value) is not None

"""What :class:`taskbeam.web.mq_listener.QueueWatch` needs of either message-queue
listener (the fast one, ``fastws.listener``, and the stock one, ``mq_listener``):
a heartbeat it hears, and a call when a lost subscription is back. Both listeners
build on it; it depends on neither.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

HEARTBEAT_SID = "taskbeam-heartbeat"


class WatchedManager:
    """What :class:`QueueWatch` needs of a Socket.IO message-queue manager.

    The heartbeat is python-socketio's own ``callback`` message addressed to this
    process (``host_id``): every listener hands it to the public
    ``trigger_callback``, with no room or client needed.
    """

    host_id: str  # python-socketio's manager's: this process
    channel: str  # and the main channel it reads
    last_heard = 0.0
    # Called (no arguments) when a lost subscription is back.
    on_resubscribed: Callable[[], None] | None = None
    reads_main_only = True  # no room channels: task events must come on the main one

    def watch_room(self, room, timeout_s=5.0) -> bool:
        """The room's events arrive here from now on (per-room channels: the fast listener)."""
        return True

    def forget_idle_rooms(self) -> int:
        return 0

    def trigger_callback(self, sid, id, data):
        if sid == HEARTBEAT_SID:
            self.last_heard = time.monotonic()
            return
        super().trigger_callback(sid, id, data)

    def heartbeat_message(self) -> str:
        return json.dumps(
            {
                "method": "callback",
                "host_id": self.host_id,
                "sid": HEARTBEAT_SID,
                "namespace": "/",
                "id": 0,
                "args": [],
            }
        )

    def heard_within(self, seconds: float) -> bool:
        return time.monotonic() - self.last_heard < seconds

    def resubscribed(self) -> None:
        if self.on_resubscribed is not None:
            self.on_resubscribed()

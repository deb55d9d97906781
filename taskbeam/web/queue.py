"""The web side of the Socket.IO message queue, watched.

python-socketio's Redis listener retries forever and only logs while it is
cut off, and it subscribes lazily on the first client. This manager records
when it last heard anything; a self-addressed heartbeat keeps that fresh, so
``/readyz`` can tell a live listener from a dead one.
"""
import logging
import time

import socketio

from .metrics import Metrics, is_task_update

log = logging.getLogger(__name__)

HEARTBEAT_METHOD = "taskbeam_heartbeat"


class WatchedRedisManager(socketio.RedisManager):
    """A ``RedisManager`` that timestamps every message its listener receives."""

    last_heard = 0.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.metrics = Metrics()

    def _handle_emit(self, message):
        # Every task event this process forwards passes here, from any emitter.
        super()._handle_emit(message)
        if is_task_update(message):
            room = message.get("room")
            recipients = sum(1 for _ in self.get_participants(message.get("namespace") or "/",
                                                              room)) if room else 0
            self.metrics.event_received(message["data"][0], recipients)

    def _listen(self):
        for message in super()._listen():
            self.last_heard = time.monotonic()
            yield message

    def publish_heartbeat(self):
        # Ignored by every manager's dispatcher (unknown method); only timestamps matter.
        self._publish({"method": HEARTBEAT_METHOD, "host_id": self.host_id})

    def heard_within(self, seconds):
        return time.monotonic() - self.last_heard < seconds


class QueueWatch:
    """Starts the listener at boot, heartbeats it, and reports its health.

    When the listener goes quiet, live events may be lost, so every socket of
    this process is disconnected: clients reconnect and resubscribe with their
    last seq, and the stored log fills the hole.
    """

    interval_s = 2.0
    stale_after_s = 3 * interval_s

    def __init__(self, sio, manager):
        self.sio = sio
        self.manager = manager

    @property
    def healthy(self):
        return self.manager.heard_within(self.stale_after_s)

    def start(self):
        server = self.sio.server
        if not server.manager_initialized:
            server.manager_initialized = True
            self.manager.initialize()
        self.sio.start_background_task(self._run)

    def _run(self):
        was_healthy = False
        while True:
            self.manager.publish_heartbeat()
            self.sio.sleep(self.interval_s)
            healthy = self.healthy
            if was_healthy and not healthy:
                log.error("message-queue listener is silent; disconnecting clients")
                self._disconnect_all()
            elif healthy and not was_healthy:
                log.info("message-queue listener is receiving")
            was_healthy = healthy

    def _disconnect_all(self):
        for sid, _eio_sid in list(self.manager.get_participants("/", None)):
            try:
                self.sio.server.disconnect(sid, namespace="/", ignore_queue=True)
            except Exception:  # a socket already closing must not stop the others
                log.exception("could not disconnect %s", sid)

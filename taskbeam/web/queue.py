"""The web side of the Socket.IO message queue: a lean listener, watched.

python-socketio's Redis listener reads through redis-py's ``PubSub.listen()``,
tens of microseconds of Python per message, and retries forever while cut off,
only logging. This manager reads the subscribed socket itself and parses every
message that arrived in one ``recv`` with hiredis; it records when it last heard
anything, and a self-addressed heartbeat keeps that fresh, so ``/readyz`` can
tell a live listener from a dead one and a silent socket gets replaced.
"""
import json
import logging
import time

import hiredis
import redis
import socketio

from . import direct
from .metrics import Metrics, is_task_update

log = logging.getLogger(__name__)

HEARTBEAT_METHOD = "taskbeam_heartbeat"
READ_BYTES = 256 * 1024


class WatchedRedisManager(socketio.RedisManager):
    """A ``RedisManager`` with a faster listener that timestamps what it receives.

    :param silence_s: reconnect when nothing (not even a heartbeat) arrived for this long.
    """

    last_heard = 0.0
    on_resubscribed = None  # called (no arguments) when a lost subscription is back

    def __init__(self, *args, silence_s=6.0, **kwargs):
        # The stdlib's json: engine.io's wrapper builds a new decoder per call.
        kwargs.setdefault("json", json)
        super().__init__(*args, **kwargs)
        self.silence_s = silence_s
        self.metrics = Metrics()

    def _handle_emit(self, message):
        # Every task event this process forwards passes here, from any emitter.
        if not direct.deliver(self, message):
            super()._handle_emit(message)
        if is_task_update(message):
            room = self.rooms.get(message.get("namespace") or "/", {}).get(message.get("room"))
            self.metrics.event_received(message["data"][0], len(room) if room else 0)

    def _subscribe(self):
        """A connection of its own (auth, TLS, db from the URL) subscribed to the channel."""
        client = redis.Redis.from_url(self.redis_url, protocol=2, socket_timeout=self.silence_s,
                                      **self.redis_options)
        connection = client.connection_pool.get_connection()
        connection.send_command("SUBSCRIBE", self.channel)
        return client, connection  # the client too: collected, it would close the socket

    def _listen(self):
        channel = self.channel
        retry_s = 1
        lost = False
        while True:
            connection = None
            try:
                _client, connection = self._subscribe()
                sock, reader = connection._sock, hiredis.Reader(encoding="utf-8")
                while True:
                    data = sock.recv(READ_BYTES)
                    if not data:
                        raise ConnectionError("Redis closed the connection")
                    self.last_heard = time.monotonic()
                    retry_s = 1
                    reader.feed(data)
                    reply = reader.gets()
                    while reply is not False:
                        # ["message", channel, data], or ["subscribe", channel, 1] once subscribed.
                        if reply[0] == "message" and reply[1] == channel:
                            yield reply[2]
                        elif reply[0] == "subscribe" and lost:
                            # What was published while we were away is gone from the queue.
                            lost = False
                            if self.on_resubscribed is not None:
                                self.on_resubscribed()
                        reply = reader.gets()
            except (redis.RedisError, OSError, hiredis.ProtocolError) as exc:
                lost = True
                log.error("message-queue listener: %s; reconnecting in %d s", exc, retry_s)
                time.sleep(retry_s)
                retry_s = min(retry_s * 2, 30)
            finally:
                if connection is not None:
                    connection.disconnect()

    def publish_heartbeat(self):
        # Ignored by every manager's dispatcher (unknown method); only timestamps matter.
        self._publish({"method": HEARTBEAT_METHOD, "host_id": self.host_id})

    def heard_within(self, seconds):
        return time.monotonic() - self.last_heard < seconds


class QueueWatch:
    """Starts the listener at boot, heartbeats it, and reports its health.

    When the listener goes quiet, live events may be lost, so every socket of
    this process is disconnected: clients reconnect and resubscribe with their
    last seq, and the stored log fills the hole. A listener that lost its
    subscription only briefly (a quick Redis restart) may have missed events as
    well, so once it is subscribed again every socket's connection is closed,
    which every Socket.IO client answers by reconnecting and resubscribing.
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
        self.manager.on_resubscribed = lambda: self.sio.start_background_task(
            self._reconnect_all)
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

    def _reconnect_all(self):
        sockets = list(self.sio.server.eio.sockets.values())
        log.warning("message-queue listener is back; closing %d connections so their "
                    "clients resubscribe", len(sockets))
        for sock in sockets:
            try:
                websocket = getattr(sock, "direct", None)
                if websocket is not None:
                    websocket.cut()
                else:
                    sock.close(wait=False, abort=True)  # no CLOSE packet: clients reconnect
            except Exception:  # a socket already closing must not stop the others
                log.exception("could not close %s", sock.sid)

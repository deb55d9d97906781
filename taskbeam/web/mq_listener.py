"""The web side of the Socket.IO message queue: its listener, watched.

Two listeners fit here: the fast path's (``fastws.FastRedisManager``) and
python-socketio's stock ``RedisManager`` (:class:`StockRedisManager`, for
``WEB_FAST_TRANSPORT=0``). :class:`QueueWatch` works with either, through what
both have (:class:`WatchedManager`, :mod:`.mq_heartbeat`): a self-addressed heartbeat that
the listener must hear, so ``/readyz`` can tell a live listener from a dead one,
and a call when a lost subscription is back, after which every client reconnects
and resumes.

The store publishes task events to per-room channels (taskbeam/emitter.py),
which the fast listener subscribes to for the rooms its process holds. The stock
listener reads one channel only: while one runs, it keeps a key set in Redis
(``TaskStore.keys.main_only``) that makes the store publish to the main channel.
"""

from __future__ import annotations

import logging

import socketio

import redis

from .. import sentinel
from . import fastws
from .fastws import seams
from .metrics import Metrics
from .mq_heartbeat import WatchedManager

log = logging.getLogger(__name__)


class StockRedisManager(WatchedManager, socketio.RedisManager):
    """python-socketio's ``RedisManager`` as it is, watched through public hooks:
    the heartbeat's ``trigger_callback``, redis-py's ``redis_connect_func`` (a
    new connection for the subscription means it was lost), and
    ``get_participants`` for the metrics (no emit-to-receive lag here)."""

    def __init__(self, url: str, channel: str, metrics: Metrics, redis_options=None):
        url, options = sentinel.stock_form(url, redis_options or {})
        options["redis_connect_func"] = self._on_redis_connect
        super().__init__(url, channel=channel, redis_options=options)
        self.metrics = metrics
        self.subscribed_once = False

    def _on_redis_connect(self, connection):
        connection.on_connect()  # what redis-py does without a redis_connect_func
        pubsub = self.pubsub
        # The subscription's connection: a new PubSub's (its connection is set
        # after connecting), or one redis-py reconnects (and resubscribes) itself.
        if pubsub is not None and pubsub.connection in (None, connection):
            if self.subscribed_once:
                self.resubscribed()
            self.subscribed_once = True

    def get_participants(self, namespace, room):
        participants = super().get_participants(namespace, room)
        if isinstance(room, str) and room.startswith("task:"):
            participants = list(participants)
            self.metrics.counted(len(participants))
        return participants


def make_manager(
    url: str, channel: str, metrics: Metrics, redis_options=None, *, fast: bool
) -> WatchedManager:
    """The fast listener if ``fast`` (:func:`fastws.in_use`), else the stock one.
    ``redis_options``: TLS, for one."""
    if fast:
        return fastws.FastRedisManager(url, channel, metrics, redis_options=redis_options)
    return StockRedisManager(url, channel, metrics, redis_options)


class QueueWatch:
    """Starts the listener at boot, heartbeats it, and reports its health.

    When the listener goes quiet, live events may be lost, so every socket of
    this process is disconnected: clients reconnect and resubscribe with their
    last seq, and the stored log fills the hole. A listener that lost its
    subscription only briefly (a quick Redis restart) may have missed events as
    well, so once it is subscribed again every connection open at that moment is
    closed, which every Socket.IO client answers by reconnecting and resubscribing.
    """

    interval_s = 2.0
    stale_after_s = 3 * interval_s
    # Longer than stale_after_s: this process stops serving before the key lapses.
    main_only_ttl_s = 15

    def __init__(self, sio, manager: WatchedManager, client: redis.Redis, main_only_key: str):
        self.sio = sio
        self.manager = manager
        self.client = client  # publishes the heartbeat
        self.main_only_key = main_only_key

    @property
    def healthy(self) -> bool:
        return self.manager.heard_within(self.stale_after_s)

    def start(self) -> None:
        self.manager.on_resubscribed = self.resubscribed
        # python-socketio starts the listener with the first connection; the
        # heartbeat must be heard before, or /readyz never passes.
        seams.start_listener_now(self.sio.server)
        self.sio.start_background_task(self._run)

    def publish_heartbeat(self) -> None:
        """The heartbeat; with a listener that reads the main channel only, the key
        that sends task events there, set first: once the heartbeat is heard (and
        clients are let in) no event goes where this process cannot read it."""
        try:
            if self.manager.reads_main_only:
                self.client.set(self.main_only_key, "1", ex=self.main_only_ttl_s)
            self.client.publish(self.manager.channel, self.manager.heartbeat_message())
        except redis.RedisError as exc:
            log.warning("message-queue heartbeat not published: %s", exc)

    def _run(self):
        was_healthy = False
        while True:
            self.manager.forget_idle_rooms()
            self.publish_heartbeat()
            self.sio.sleep(self.interval_s)
            healthy = self.healthy
            if was_healthy and not healthy:
                log.error("message-queue listener is silent; disconnecting clients")
                self.close_connections()
            elif healthy and not was_healthy:
                log.info("message-queue listener is receiving")
            was_healthy = healthy

    def resubscribed(self) -> None:
        """The listener's subscription is back (called in the listener, at once): the
        connections open now may have missed events, so they are closed. Not those
        opened from now on: they read the stored log after this, and a client that
        had just reconnected would be sent away again for nothing."""
        sids = self.connection_sids()
        self.sio.start_background_task(self._reconnect, sids)

    def _reconnect(self, sids):
        log.warning("message-queue listener is back; closing connections so clients resubscribe")
        self.close_connections(sids)

    def connection_sids(self):
        """Engine.io's sids of this process's connections."""
        return [eio_sid for _sid, eio_sid in self.manager.get_participants("/", None)]

    def close_connections(self, sids=None):
        """Close every connection (or those of ``sids``, engine.io's) as a dropped
        network would: Socket.IO clients then reconnect on their own (after a
        server-side disconnect they would not), and are refused here until the
        listener receives again (or, on shutdown, reach the next process)."""
        eio = self.sio.server.eio
        if sids is None:
            sids = self.connection_sids()
        if not sids:
            return
        log.warning("closing %d client connections", len(sids))
        for eio_sid in sids:
            try:
                fastws.cut_or_close(eio, eio_sid)
            except Exception:  # a socket already closing must not stop the others
                log.exception("could not close %s", eio_sid)

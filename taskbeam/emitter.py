"""Persist first, publish second: how every task event leaves its producer.

The event is written to the task's log in Redis (atomically with its seq), and
only then published to the Socket.IO message queue. A subscriber that misses the
live message reads it back from the log, so a lost publish loses nothing.
"""

import json
import logging
import time

from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from . import protocol

log = logging.getLogger(__name__)

# Failures worth waiting out: Redis restarting, loading its AOF, or a network blip.
TRANSIENT = (ConnectionError, TimeoutError, BusyLoadingError)


def retrying(
    action,
    *,
    deadline_s,
    first_delay_s=0.05,
    max_delay_s=2.0,
    sleep=time.sleep,
    clock=time.monotonic,
):
    """Run ``action()`` until it succeeds or ``deadline_s`` passes, with bounded backoff.

    Only :data:`TRANSIENT` errors are retried; the last one is re-raised.
    """
    give_up_at = clock() + deadline_s
    delay = first_delay_s
    while True:
        try:
            return action()
        except TRANSIENT as exc:
            if clock() + delay > give_up_at:
                raise
            log.warning("Redis unavailable (%s); retrying in %.2fs", exc, delay)
            sleep(delay)
            delay = min(delay * 2, max_delay_s)


class Emitter:
    """Writes task events durably, then publishes them live.

    :param store: :class:`taskbeam.store.TaskStore`.
    :param socketio: a Flask-SocketIO ``SocketIO``; in the worker a write-only
                     external emitter (``SocketIO(message_queue=...)``), no app.
    :param retry_for_s: how long to keep retrying while Redis is unreachable.
    """

    def __init__(self, store, socketio, retry_for_s=60.0):
        self.store = store
        self.socketio = socketio
        self.retry_for_s = retry_for_s

    def emit(self, task_id, *, token=None, **patch):
        """Persist and publish one event; returns ``(event, cancel_requested)``.

        :param token: the run's token (see :meth:`TaskStore.claim_run`), if a run writes.
        :raises taskbeam.store.TaskFinished: the task already ended.
        :raises taskbeam.store.LeaseLost: ``token``'s run was replaced.
        """
        # One id for every try: a retry after a lost reply is not written twice. One
        # time too: a retry that writes it again on a new primary (an event lost in
        # a failover before any replica had it) writes the same event.
        emit_id, ts = self.store.new_emit_id(), time.time()
        event_json, cancel = retrying(
            lambda: self.store.append(task_id, ts=ts, token=token, emit_id=emit_id, **patch),
            deadline_s=self.retry_for_s,
        )
        event = json.loads(event_json)
        # Best effort (the manager logs and gives up after one retry): the event is
        # already in the log, and subscribers read it back when they resubscribe.
        self.socketio.emit(protocol.TASK_UPDATE_EVENT, event, to=protocol.task_room(task_id))
        return event, cancel

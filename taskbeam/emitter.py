"""Persist first, publish second: how every task event leaves its producer.

The event is written to the task's log in Redis (atomically with its seq), and
only then published to the Socket.IO message queue. A subscriber that misses the
live message reads it back from the log, so a lost publish loses nothing.

Two ways to publish:

- by the store (the worker's, ``Emitter(store_publishes=True)``): the store sends
  the external emitter's own message to the task's room channel, which only the
  web processes holding that room read (so web capacity grows with replicas;
  ``taskbeam.web.mq_listener``). Without replicas to wait for, the Lua append
  publishes it itself: one round trip, and since the write and the publish are
  one atomic step, a worker killed between them cannot leave an event stored but
  never published. In Sentinel mode it is published after the append's ``WAIT``
  (an event may be seen only once a replica has it);
- by Flask-SocketIO's ``emit`` after the append, to the main channel: the web
  process's own emits, whose manager delivers them to its own sockets and skips
  its own messages on the queue.

Either way the bytes are the stock emitter's, and every web process also reads
the main channel, so a stock ``SocketIO(message_queue=...)`` in any process keeps
reaching browsers.
"""

import json
import logging
import time

from redis.exceptions import BusyLoadingError, ConnectionError, RedisError, TimeoutError
from socketio import RedisManager

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


class StockEnvelope:
    """The external emitter's message for a task event, around the event's JSON.

    The message is python-socketio's (:func:`taskbeam.protocol.mq_emit_message`,
    which ``taskbeam.web.fastws.seams`` checks against the installed library) from
    this emitter's manager (its channel and ``host_id``), with placeholders for the
    event and the room. :meth:`around` gives what :meth:`TaskStore.append` publishes.

    :raises ValueError: the manager is not python-socketio's Redis one with the
        standard ``json.dumps`` (engineio.json's), whose text the store's script writes.
    """

    EVENT, ROOM = "\0taskbeam-event\0", "\0taskbeam-room\0"

    def __init__(self, socketio):
        manager = socketio.server.manager
        if not isinstance(manager, RedisManager) or manager.json.dumps is not json.dumps:
            raise ValueError("publishing by the store needs RedisManager and json.dumps")
        self.channel = manager.channel
        text = protocol.mq_emit_message(
            protocol.TASK_UPDATE_EVENT, self.EVENT, self.ROOM, manager.host_id
        )
        self.head, rest = text.split(json.dumps(self.EVENT))
        self.middle, self.tail = rest.split(json.dumps(self.ROOM))

    def around(self, task_id):
        """``(channel, room_channel, head, tail, before_room, after_room)`` for one
        task's events: its message is ``head + event + tail``; the last two build
        another task's tail (a workflow's, in the store's script)."""
        room = protocol.task_room(task_id)
        return (
            self.channel,
            protocol.room_channel(self.channel, room),
            self.head,
            self.middle + json.dumps(room) + self.tail,
            self.middle,
            self.tail,
        )


class Emitter:
    """Writes task events durably, then publishes them live.

    :param store: :class:`taskbeam.store.TaskStore`.
    :param socketio: a Flask-SocketIO ``SocketIO``; in the worker a write-only
                     external emitter (``SocketIO(message_queue=...)``), no app.
    :param retry_for_s: how long to keep retrying while Redis is unreachable.
    :param store_publishes: the store publishes to the task's room channel (see the
                     module's docstring); False publishes with ``socketio`` after the
                     append, to the main channel. Only for an external emitter.
    """

    def __init__(self, store, socketio, retry_for_s=60.0, store_publishes=False):
        self.store = store
        self.socketio = socketio
        self.retry_for_s = retry_for_s
        self.envelope = StockEnvelope(socketio) if store_publishes else None
        # In Sentinel mode the append waits for replicas; the publish comes after it.
        self.in_append = self.envelope is not None and not store.wait_replicas

    def write(self, task_id, *, token=None, **patch):
        """:meth:`emit`, returning ``(event, taskbeam.store.Appended)``: for a
        workflow's child, also what it did to the parent."""
        # One id for every try: a retry after a lost reply is not written twice. One
        # time too: a retry that writes it again on a new primary (an event lost in
        # a failover before any replica had it) writes the same event.
        emit_id, ts = self.store.new_emit_id(), time.time()
        publish = self.envelope.around(task_id) if self.envelope else None
        written = retrying(
            lambda: self.store.append(
                task_id,
                ts=ts,
                token=token,
                emit_id=emit_id,
                publish=publish if self.in_append else None,
                **patch,
            ),
            deadline_s=self.retry_for_s,
        )
        event = json.loads(written.event)
        if not self.in_append:
            self.publish(task_id, event)
            if written.parent_event:  # a workflow's roll-up, from a child's event
                self.publish(written.parent, json.loads(written.parent_event))
        return event, written

    def emit(self, task_id, *, token=None, **patch):
        """Persist and publish one event; returns ``(event, cancel_requested)``.

        :param token: the run's token (see :meth:`TaskStore.claim_run`), if a run writes.
        :raises taskbeam.store.TaskFinished: the task already ended.
        :raises taskbeam.store.LeaseLost: ``token``'s run was replaced.
        """
        event, written = self.write(task_id, token=token, **patch)
        return event, written.cancel

    def publish(self, task_id, event):
        """Publish an event already in the log (best effort: subscribers read it back
        when they resubscribe; killed right here, a worker leaves it stored only)."""
        if self.envelope is None:  # the manager logs and gives up after one retry
            self.socketio.emit(protocol.TASK_UPDATE_EVENT, event, to=protocol.task_room(task_id))
            return
        channel, room_channel, head, tail = self.envelope.around(task_id)[:4]
        try:
            self.store.publish(channel, room_channel, head + json.dumps(event) + tail)
        except RedisError as exc:
            log.warning("event %s/%s not published: %s", task_id, event["seq"], exc)

    def cancel_children(self, task_id):
        """Cancel a workflow's children (see :meth:`TaskStore.cancel_children`)."""
        around = self.envelope.around if self.in_append else None
        return retrying(
            lambda: self.store.cancel_children(task_id, around), deadline_s=self.retry_for_s
        )

    def flush_rollups(self):
        """Write and publish the workflows' held-back roll-up events; how many."""
        around = self.envelope.around if self.in_append else None
        written = retrying(lambda: self.store.flush_rollups(around), deadline_s=self.retry_for_s)
        if not self.in_append:
            for task_id, event in written:
                self.publish(task_id, json.loads(event))
        return len(written)

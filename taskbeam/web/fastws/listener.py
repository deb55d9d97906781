"""The fast path's message-queue listener: python-socketio's Redis manager with
a leaner read loop and delivery through :func:`transport.deliver`.

python-socketio's Redis listener reads through redis-py's ``PubSub.listen()``,
tens of microseconds of Python per message, and retries forever while cut off,
only logging. This one reads the subscribed socket itself, parses every message
that arrived in one ``recv`` with hiredis, hands task events on already framed
(:func:`cut_task_event`), records when it last heard anything, and tells its
watcher (``on_resubscribed``) when a lost subscription is back.

Besides the main channel (stock emitters, the web processes' own emits) its
subscription carries the channel of each room this process holds
(:meth:`watch_room`), where the store publishes task events: a process reads
the events of its own clients' tasks only, so capacity grows with replicas.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import hiredis

import redis

from ... import protocol, sentinel
from ..mq_heartbeat import WatchedManager
from . import seams, transport

log = logging.getLogger(__name__)

READ_BYTES = 256 * 1024
# A read that filled the buffer or brought this many messages means Redis holds more:
# the listener would run on without waiting (see listen). Fewer, and its next recv
# soon waits anyway.
TURN_AFTER_MESSAGES = 16


# A task event as python-socketio's RedisManager publishes an emit to one room (the
# stock emitter's bytes; the store's Lua append writes the same, tested): the event's
# JSON is framed as it came, not parsed and encoded again (that was a quarter of the
# web's CPU per delivered event). Any other message, or this one in any other form,
# goes through python-socketio. The pieces come from protocol.mq_emit_message, the
# layout seams.problems() checks against the installed python-socketio.
_DATA, _ROOM, _HOST = (json.dumps(f"\0{name}\0") for name in ("data", "room", "host"))
_BEFORE_DATA, _BEFORE_ROOM, _BEFORE_HOST, _AFTER_HOST = re.split(
    f"{re.escape(_DATA)}|{re.escape(_ROOM)}|{re.escape(_HOST)}",
    protocol.mq_emit_message(protocol.TASK_UPDATE_EVENT, "\0data\0", "\0room\0", "\0host\0"),
)
TASK_EVENT_HEAD = _BEFORE_DATA + "{"  # an event is a JSON object
TASK_EVENT_PACKET = f'2["{protocol.TASK_UPDATE_EVENT}",'  # then the event's arguments and "]"
TASK_EVENT_ROOM = _BEFORE_ROOM + '"'
TASK_EVENT_TAIL = re.compile(
    r'([^"\\]+)"' + re.escape(_BEFORE_HOST) + r'"([0-9a-f]+)"' + re.escape(_AFTER_HOST)
)
EVENT_TS = re.compile(r'"ts": ?(-?[0-9][0-9.eE+-]*)[,}]')  # for the lag metric only


class TaskEvent(dict):
    """A task event cut from its message: what python-socketio's listener reads of an
    ``emit`` (``method``, ``host_id``, ``room``...), the Socket.IO packet, ready, and
    the event's ``ts`` as written (None if it has none)."""

    __slots__ = ("packet", "ts")
    packet: str
    ts: str | None


def cut_task_event(message: str) -> TaskEvent | None:
    """The :class:`TaskEvent` in ``message``, or None if it is not one in that form."""
    if not message.startswith(TASK_EVENT_HEAD):
        return None
    # The last one: in the event's strings a quote is escaped, so this text cannot
    # occur inside them, and the tail after it is checked whole.
    cut = message.rfind(TASK_EVENT_ROOM)
    if cut < len(TASK_EVENT_HEAD):
        return None
    tail = TASK_EVENT_TAIL.fullmatch(message, cut + len(TASK_EVENT_ROOM))
    if tail is None:
        return None
    event = TaskEvent(
        method="emit",
        event=protocol.TASK_UPDATE_EVENT,
        namespace="/",
        room=tail[1],
        host_id=tail[2],
    )
    args = message[len(TASK_EVENT_HEAD) - 1 : cut]
    event.packet = TASK_EVENT_PACKET + args + "]"
    ts = EVENT_TS.search(args)
    event.ts = ts[1] if ts else None
    return event


class RoomChannel:
    """One room's channel on the subscription: ``ready`` once Redis confirmed it."""

    __slots__ = ("room", "ready")

    def __init__(self, room):
        self.room, self.ready = room, threading.Event()


class FastRedisManager(WatchedManager, seams.RoomsBySid, seams.PubSubHooks):
    """:param silence_s: reconnect when nothing (not even a heartbeat) arrived for this long.
    :param metrics: counts the task events delivered (``taskbeam.web.metrics.Metrics``)."""

    fast_transport = True
    reads_main_only = False

    def __init__(self, url: str, channel: str, metrics, silence_s=6.0, redis_options=None):
        # python-socketio publishes this process's own emits: it gets the URL in the form
        # it reads; the subscription below is made here, from the URL as configured.
        stock_url, stock_options = sentinel.stock_form(url, redis_options or {})
        super().__init__(stock_url, channel=channel, redis_options=stock_options)
        self.subscribe_url, self.subscribe_options = url, dict(redis_options or {})
        self.silence_s = silence_s
        self.metrics = metrics
        # channel -> RoomChannel. An entry means one SUBSCRIBE for it is sent or
        # confirmed on the current connection (or will be sent by the next one).
        self.room_channels: dict[str, RoomChannel] = {}
        self.subscription = None  # the subscribed socket, while there is one
        self.send_lock = threading.Lock()  # commands from handlers and the sweep

    def watch_room(self, room, timeout_s=5.0) -> bool:
        """Make sure the subscription carries ``room``'s channel; True once Redis
        confirmed it (what is published after that arrives here), False if it did
        not in ``timeout_s``. Call it after joining the room, before reading the log."""
        channel = protocol.room_channel(self.channel, room)
        watched = self.room_channels.get(channel)
        if watched is None:
            watched = self.room_channels[channel] = RoomChannel(room)
            self.send("SUBSCRIBE", channel)
        return watched.ready.wait(timeout_s)

    def forget_idle_rooms(self) -> int:
        """Unsubscribe the channels of rooms no socket here holds any more; how many.
        A channel still waiting for its confirmation stays (that SUBSCRIBE's reply
        must not be taken for a later one's)."""
        held = seams.rooms(self).get("/", {})
        idle = [
            channel
            for channel, watched in self.room_channels.items()
            if watched.ready.is_set() and not held.get(watched.room)
        ]
        for channel in idle:
            del self.room_channels[channel]
        for start in range(0, len(idle), 1000):
            self.send("UNSUBSCRIBE", *idle[start : start + 1000])
        return len(idle)

    def send(self, *command):
        """Write a command on the subscription; without one (or if this fails) the
        listener's next connection subscribes every watched channel itself."""
        subscription = self.subscription
        if subscription is None:
            return
        sock, connection = subscription
        try:
            with self.send_lock:
                sock.sendall(b"".join(connection.pack_command(*command)))
        except OSError as exc:
            log.warning("message-queue listener: %s not sent: %s", command[0], exc)

    def handle_emit(self, message: dict) -> bool:
        # The one place task events from any emitter reach this process's sockets.
        if isinstance(message, TaskEvent):
            recipients = transport.deliver_packet(self, message["room"], message.packet)
            self.metrics.event_received(message.ts, recipients)
            return True
        delivered = transport.deliver(self, message)
        if delivered is None:
            return False
        self.metrics.delivered(message, delivered)
        return True

    def subscribe(self):
        """A connection of its own (auth, TLS, db from the URL) subscribed to the main
        channel and to every watched room's."""
        options = dict(self.subscribe_options, protocol=2, socket_timeout=self.silence_s)
        if sentinel.is_sentinel_url(self.subscribe_url):  # the current primary, asked each time
            client = sentinel.master_client(self.subscribe_url, **options)
        else:
            client = redis.Redis.from_url(self.subscribe_url, **options)
        connection = client.connection_pool.get_connection()
        # From here on watch_room writes to this connection; the channels watched
        # until now are subscribed below, each unconfirmed until its reply comes.
        channels = list(self.room_channels)
        for watched in self.room_channels.values():
            watched.ready.clear()
        self.subscription = seams.redis_socket(connection), connection
        with self.send_lock:
            connection.send_command("SUBSCRIBE", self.channel, *channels)
        return client, connection  # the client too: collected, it would close the socket

    def listen(self):
        channel = self.channel
        retry_s = 1
        lost = False
        while True:
            connection = None
            try:
                _client, connection = self.subscribe()
                sock, reader = seams.redis_socket(connection), hiredis.Reader(encoding="utf-8")
                while True:
                    data = sock.recv(READ_BYTES)
                    if not data:
                        raise ConnectionError("Redis closed the connection")
                    self.last_heard = time.monotonic()
                    retry_s = 1
                    reader.feed(data)
                    reply = reader.gets()
                    batch = 0  # messages in this read, for the metrics (bench timeline)
                    while reply is not False:
                        # ["message", channel, data]; ["subscribe", channel, n] once
                        # subscribed, ["unsubscribe", channel, n] once not.
                        kind = reply[0]
                        if kind == "message":
                            batch += 1
                            yield cut_task_event(reply[2]) or reply[2]
                        elif kind == "subscribe":
                            if reply[1] == channel:
                                if lost:
                                    # What was published while we were away is gone.
                                    lost = False
                                    self.resubscribed()
                            elif (watched := self.room_channels.get(reply[1])) is not None:
                                watched.ready.set()
                        reply = reader.gets()
                    self.metrics.read(batch)
                    if batch >= TURN_AFTER_MESSAGES or len(data) == READ_BYTES:
                        # A turn for the web's other greenlets (health checks, the API,
                        # new sockets): with a backlog in Redis every recv returns at
                        # once, and under load they waited seconds. A timer, not
                        # sleep(0): the loop polls for I/O before it runs this again.
                        time.sleep(0.0001)
            except (redis.RedisError, OSError, hiredis.ProtocolError) as exc:
                lost = True
                log.error("message-queue listener: %s; reconnecting in %d s", exc, retry_s)
                time.sleep(retry_s)
                retry_s = min(retry_s * 2, 30)
            finally:
                self.subscription = None
                if connection is not None:
                    connection.disconnect()

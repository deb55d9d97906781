"""The fast path's message-queue listener: python-socketio's Redis manager with
a leaner read loop and delivery through :func:`transport.deliver`.

python-socketio's Redis listener reads through redis-py's ``PubSub.listen()``,
tens of microseconds of Python per message, and retries forever while cut off,
only logging. This one reads the subscribed socket itself, parses every message
that arrived in one ``recv`` with hiredis, records when it last heard anything,
and tells its watcher (``on_resubscribed``) when a lost subscription is back.
"""

from __future__ import annotations

import logging
import time

import hiredis

import redis

from ... import sentinel
from ..mq_listener import Heard
from . import seams, transport

log = logging.getLogger(__name__)

READ_BYTES = 256 * 1024


class FastRedisManager(Heard, seams.PubSubHooks):
    """:param silence_s: reconnect when nothing (not even a heartbeat) arrived for this long.
    :param metrics: counts the task events delivered (``taskbeam.web.metrics.Metrics``)."""

    fast_transport = True

    def __init__(self, url: str, channel: str, metrics, silence_s=6.0, redis_options=None):
        # python-socketio publishes this process's own emits: it gets the URL in the form
        # it reads; the subscription below is made here, from the URL as configured.
        stock_url, stock_options = sentinel.stock_form(url, redis_options or {})
        super().__init__(stock_url, channel=channel, redis_options=stock_options)
        self.subscribe_url, self.subscribe_options = url, dict(redis_options or {})
        self.silence_s = silence_s
        self.metrics = metrics

    def handle_emit(self, message: dict) -> bool:
        # The one place task events from any emitter reach this process's sockets.
        recipients = transport.deliver(self, message)
        if recipients is None:
            return False
        self.metrics.delivered(message, recipients)
        return True

    def subscribe(self):
        """A connection of its own (auth, TLS, db from the URL) subscribed to the channel."""
        options = dict(self.subscribe_options, protocol=2, socket_timeout=self.silence_s)
        if sentinel.is_sentinel_url(self.subscribe_url):  # the current primary, asked each time
            client = sentinel.master_client(self.subscribe_url, **options)
        else:
            client = redis.Redis.from_url(self.subscribe_url, **options)
        connection = client.connection_pool.get_connection()
        connection.send_command("SUBSCRIBE", self.channel)
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
                        # ["message", channel, data], or ["subscribe", channel, 1] once subscribed.
                        if reply[0] == "message" and reply[1] == channel:
                            batch += 1
                            yield reply[2]
                        elif reply[0] == "subscribe" and lost:
                            # What was published while we were away is gone from the queue.
                            lost = False
                            self.resubscribed()
                        reply = reader.gets()
                    self.metrics.read(batch)
                    # A turn for the web's other greenlets (health checks, the API, new
                    # sockets): with a backlog in Redis every recv returns at once, and
                    # under load they waited seconds. A timer, not sleep(0): the loop
                    # polls for I/O before it runs the listener again.
                    time.sleep(0.0001)
            except (redis.RedisError, OSError, hiredis.ProtocolError) as exc:
                lost = True
                log.error("message-queue listener: %s; reconnecting in %d s", exc, retry_s)
                time.sleep(retry_s)
                retry_s = min(retry_s * 2, 30)
            finally:
                if connection is not None:
                    connection.disconnect()

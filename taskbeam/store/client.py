"""The Redis client every process makes, and the options every Redis client shares."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import redis as redis_lib

from .. import sentinel

if TYPE_CHECKING:
    from ..config import Settings

# A Redis host that is gone without a word (power lost, partitioned, failed over)
# resets no connection: a command or a BRPOP would wait on it until TCP gives up,
# which takes minutes. With these, data unacknowledged for 3 s, or keepalives
# unanswered on an idle connection, break the connection, and the client reconnects
# (under Sentinel, to the new primary). A busy but live Redis still acknowledges:
# only socket_timeout bounds that wait.
DEAD_PEER_OPTIONS: dict[str, Any] = {
    "socket_keepalive": True,
    "socket_keepalive_options": {
        socket.TCP_KEEPIDLE: 5,
        socket.TCP_KEEPINTVL: 1,
        socket.TCP_KEEPCNT: 3,
        socket.TCP_USER_TIMEOUT: 3_000,
    },
}


def redis_tls(settings: Settings) -> dict[str, Any]:
    """TLS options of every Redis client, for a ``rediss://`` or ``rediss+sentinel://``
    REDIS_URL (see taskbeam.sentinel.tls_options)."""
    return sentinel.tls_options(settings.redis_url, settings.redis_tls_ca_file)


def redis_client(settings: Settings, max_connections: int | None = None) -> redis_lib.Redis:
    """The Redis client both sides use. With ``max_connections`` the pool blocks
    (up to 10 s) instead of opening a connection per waiting greenlet."""
    options: dict[str, Any] = dict(
        DEAD_PEER_OPTIONS,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=3,
        health_check_interval=30,
        **redis_tls(settings),
    )
    if sentinel.is_sentinel_url(settings.redis_url):
        if max_connections is not None:
            options.update(max_connections=max_connections, timeout=10)
        return sentinel.master_client(settings.redis_url, **options)
    if max_connections is None:
        return redis_lib.Redis.from_url(settings.redis_url, **options)
    pool = redis_lib.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max_connections, timeout=10, **options
    )
    return redis_lib.Redis(connection_pool=pool)

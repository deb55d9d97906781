"""Redis Sentinel mode: a ``REDIS_URL`` of the form
``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT,HOST:PORT,.../DB/MASTER_NAME`` selects
it for every client (the format python-socketio reads), ``rediss+sentinel://`` the
same over TLS to the Sentinels and the data nodes (:func:`tls_options`).

The URL's credentials are the data nodes' and the Sentinels' alike (redis/ha.yml
gives each service the same user on both): a Sentinel answers, and takes commands
such as ``SENTINEL MONITOR``, only from a client that authenticated (and that one
from its operators only). Every client asks the Sentinels for the current
primary when it connects, so after a failover a new connection finds the new
primary: the store and the web's listener through redis-py's
``Sentinel.master_for``, the broker through kombu's Sentinel transport
(:func:`broker_url`), the Socket.IO emitter through python-socketio.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit

from redis.sentinel import Sentinel, SentinelConnectionPool

import redis as redis_lib

SCHEME = "redis+sentinel"
TLS_SCHEME = "rediss+sentinel"  # Sentinels and data nodes over TLS


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url.strip()).scheme.lower() in (SCHEME, TLS_SCHEME)


def uses_tls(url: str) -> bool:
    return urlsplit(url.strip()).scheme.lower() in ("rediss", TLS_SCHEME)


def tls_options(url: str, ca_file: str = "") -> dict[str, Any]:
    """redis-py options for a TLS ``url`` (``rediss://``, ``rediss+sentinel://``): the
    server's certificate verified against ``ca_file`` (else the system's CAs) and its
    host name or address. Empty for a plain URL."""
    if not uses_tls(url):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_ca_certs": ca_file or None}
    if is_sentinel_url(url):  # rediss:// says it itself; a Sentinel pool needs telling
        options["ssl"] = True
    return options


def stock_form(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(url, redis_options)`` for python-socketio's ``RedisManager``: it reads only
    ``redis+sentinel://``, and takes the Sentinels' own options as ``sentinel_kwargs``."""
    if not is_sentinel_url(url):
        return url, dict(options)
    return (
        urlsplit(url)._replace(scheme=SCHEME).geturl(),
        dict(options, sentinel_kwargs=_sentinel_kwargs(options, url)),
    )


def _sentinel_kwargs(options: dict[str, Any], url: str) -> dict[str, Any]:
    # Bounded waits on the Sentinels too (a dead or cut-off one must not stall
    # discovery), the same TLS as the data nodes, and the URL's credentials.
    kept = {k: v for k, v in options.items() if k.startswith(("socket_", "ssl"))}
    return {**kept, **auth(url)}


def auth(url: str) -> dict[str, str]:
    """redis-py's ``username``/``password`` for the Sentinels of ``url`` (those it has)."""
    _sentinels, _name, _db, username, password = parse(url)
    return {k: v for k, v in (("username", username), ("password", password)) if v}


def parse(
    url: str,
) -> tuple[tuple[tuple[str, int], ...], str, int, str | None, str | None]:
    """``(sentinels, master_name, db, username, password)`` of a Sentinel URL.

    :raises ValueError: with what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme not in (SCHEME, TLS_SCHEME):
        raise ValueError(f"not a {SCHEME}:// (or {TLS_SCHEME}://) URL")
    sentinels = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel {item!r} must be HOST:PORT")
        sentinels.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if len(path) != 2 or not path[0].isdigit() or not path[1].replace("-", "").isalnum():
        raise ValueError("the path must be /DB/MASTER_NAME, e.g. /0/taskbeam")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return tuple(sentinels), path[1], int(path[0]), username, password


class SentinelBlockingPool(SentinelConnectionPool, redis_lib.BlockingConnectionPool):
    """redis-py's Sentinel pool that waits for a free connection when all are in
    use (as the single-Redis web pool does) instead of raising."""


def master_client(url: str, max_connections: int | None = None, **options: Any) -> redis_lib.Redis:
    """A ``redis.Redis`` on the current primary; after a failover its next
    connection goes to the new one. ``options`` as for ``Redis.from_url``."""
    sentinels, name, db, username, password = parse(url)
    manager = Sentinel(sentinels, sentinel_kwargs=_sentinel_kwargs(options, url))
    kwargs = dict(options, db=db, username=username, password=password)
    if max_connections is not None:
        kwargs.update(connection_pool_class=SentinelBlockingPool, max_connections=max_connections)
    client: redis_lib.Redis = manager.master_for(name, **kwargs)
    return client


def broker_url(url: str) -> str:
    """kombu's form of a Sentinel URL: ``sentinel://[:PW@]HOST:PORT/DB`` per Sentinel,
    joined by ``;`` (the master name goes in the transport options)."""
    sentinels, _name, db, username, password = parse(url)
    auth = ""
    if password:
        auth = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
    return ";".join(f"sentinel://{auth}{host}:{port}/{db}" for host, port in sentinels)


def master_name(url: str) -> str:
    return parse(url)[1]

"""kombu's Redis transport, fixed so that a worker survives a broker restart.

With kombu 5.7.0 and Celery 5.7.0, a worker whose broker connection drops does
not reconnect: it exits with ``Unrecoverable error: AttributeError("'NoneType'
object has no attribute 'hostname'")``. Celery's consumer first *collects* the
broken connection; that fails half-way when Redis is down (deleting the worker's
auto-delete broadcast queue needs Redis) and still detaches kombu's transport
from the connection (``transport.client = None``). Celery then *closes* the
connection; the channel restores its unacknowledged messages through a new Redis
pool, built from ``transport.client``, and the AttributeError escapes every
error handler. Acknowledging a running task's message on that channel fails the
same way. Docker restarts the worker; an operator without a restart policy loses it.

:class:`Channel` builds its connection parameters when it opens and uses them
once detached, so the restore and the acks reach Redis
again, or fail with a connection error that Celery handles. This is the one
place that overrides a private kombu method (``Channel._connparams``).

- ``BROKER_TRANSPORT_FIX=0`` (``Settings.broker_transport_fix``, passed to
  :func:`selected`) uses kombu's stock transport.
- On a kombu version other than :data:`KOMBU_VERSIONS`, or one without the
  method, the stock transport is used, with one warning.
"""

import logging

import kombu
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

# The versions this was written and tested against (tests/unit/test_broker_transport.py).
KOMBU_VERSIONS = ("5.7.0",)
TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"


class Channel(kombu_redis.Channel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Built while attached: what the restore and the acks use once detached.
        self._attached_params = super()._connparams()

    def _connparams(self, asynchronous=False):
        if self.connection.client is None and not asynchronous:
            return dict(self._attached_params)
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with the same fix. A failover drops the
    connection as a restart does, and kombu's Sentinel pool reads the Sentinels'
    addresses from ``transport.client`` as well: both are kept from when it opened."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._attached_params = super()._connparams()
        self._attached_alt = list(self.connection.client.alt)

    def _connparams(self, asynchronous=False):
        if isinstance(self.connection.client, (type(None), _Detached)) and not asynchronous:
            return dict(self._attached_params)
        return super()._connparams(asynchronous=asynchronous)

    def _sentinel_managed_pool(self, asynchronous=False):
        if self.connection.client is not None or asynchronous:
            return super()._sentinel_managed_pool(asynchronous)
        # Detached: kombu's method reads ``client.alt``; lend it what was kept.
        self.connection.client = _Detached(self._attached_alt)
        try:
            return super()._sentinel_managed_pool(asynchronous)
        finally:
            self.connection.client = None


class _Detached:
    """What ``SentinelChannel._sentinel_managed_pool`` reads of a detached client."""

    def __init__(self, alt):
        self.alt = alt


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def problems():
    """Why the fix cannot be used with the installed kombu (empty when it can)."""
    found = []
    if kombu.__version__ not in KOMBU_VERSIONS:
        found.append(f"kombu {kombu.__version__} (written for {', '.join(KOMBU_VERSIONS)})")
    if not callable(getattr(kombu_redis.Channel, "_connparams", None)):
        found.append("kombu's Redis Channel has no _connparams")
    if not callable(getattr(kombu_redis.SentinelChannel, "_sentinel_managed_pool", None)):
        found.append("kombu's SentinelChannel has no _sentinel_managed_pool")
    return found


def selected(enabled, sentinel=False):
    """The ``broker_transport`` setting for Celery: this transport, or kombu's own
    (not ``enabled``: ``BROKER_TRANSPORT_FIX=0``, ``Settings.broker_transport_fix``;
    or a kombu it was not written for): None for Redis, ``"sentinel"`` in Sentinel mode."""
    stock = "sentinel" if sentinel else None
    if not enabled:
        return stock
    found = problems()
    if found:
        log.warning("broker transport fix off, kombu's stock Redis transport: %s", "; ".join(found))
        return stock
    return SENTINEL_TRANSPORT if sentinel else TRANSPORT

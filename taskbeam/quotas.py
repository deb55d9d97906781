"""What one client may accumulate, not only how fast it may ask (issue 32).

The rate limits (``check_rate`` in the web API) bound requests per minute; these
bound what the requests leave behind, on the create path (:func:`create`, one call
from ``POST /api/tasks``):

- a Redis memory guard: above ``REDIS_MEMORY_HIGH_WATER_PCT`` of ``maxmemory`` new
  tasks are refused (503 ``busy``); running tasks still write their events, which
  ``noeviction`` would otherwise refuse for everyone once Redis is full. ``INFO
  memory`` is read at most once a second per process.
- unfinished tasks per client address across sessions (``MAX_ACTIVE_TASKS_PER_IP``;
  IPv6 addresses count per /64, :func:`address_key`), as MAX_ACTIVE_TASKS does per
  owner: a new cookie no longer makes room.
- a shorter retention for anonymous owners (``ANONYMOUS_TASK_RETENTION_S``, session
  mode): what a visitor without a login leaves in Redis goes away sooner.
- exports: stored bytes in total (``EXPORT_QUOTA_BYTES``), per owner
  (``EXPORT_QUOTA_PER_OWNER_BYTES``) and per client address
  (``EXPORT_QUOTA_PER_IP_BYTES``: new cookies make no room), and a free-space floor
  on the exports volume (``EXPORT_MIN_FREE_PCT``). The web does not mount the volume:
  a worker measures it every 10 s (:func:`report_export_usage`) and the web reads
  those figures.
  A running export stops (``storage_full``) when the floor is reached
  (:func:`check_free_space`), and ``DELETE /api/tasks/<id>`` queues its file for
  removal (:func:`forget_export`, done by :func:`remove_forgotten_exports`).

Keys (``ns`` is TASKBEAM_NAMESPACE):

- ``ns:exports:usage``          hash: the exports volume's size, free, used, cap,
                                floor and oldest file time, with ``at``
- ``ns:exports:owners``         hash: owner -> ``"<bytes> <oldest mtime>"``
- ``ns:exports:addrs``          hash: address key -> the same, by the creating address
- ``ns:exports:forgotten``      set: file names of deleted tasks' exports
"""

import ipaddress
import logging
import os
import time

from redis.exceptions import ResponseError

from . import protocol
from .progress import JobError
from .store import Keys, TooManyActiveAtAddress

log = logging.getLogger(__name__)

# INFO memory at most this often per process: the create path pays no round trip.
MEMORY_CHECK_EVERY_S = 1.0
# A worker measures the exports volume every EXPORT_SWEEP_ROUNDS housekeeping rounds
# (10 s); figures older than this are not used (no worker is measuring).
USAGE_STALE_S = 60
# Retry-After for a refusal that waiting may cure but that has no expiry to point at.
BUSY_RETRY_S = 30
MAX_FORGOTTEN_PER_ROUND = 500


class Refused(Exception):
    """A quota refuses the request: the contract's error with its status."""

    def __init__(self, status, code, message, retry_after=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = {"Retry-After": str(max(1, int(retry_after)))} if retry_after else None


def address_key(address):
    """The per-address limits' key of a client address: IPv6 counts per /64 (one
    subscriber gets a /64 or more, and picks any address in it), an IPv4-mapped
    IPv6 address as its IPv4 one."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return str(address)[:64]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class MemoryGuard:
    """``busy()``: Redis holds more than the high-water mark of its ``maxmemory``.

    Cached for :data:`MEMORY_CHECK_EVERY_S`; without a ``maxmemory`` (0) never busy.
    """

    def __init__(self, redis, high_water_pct, clock=time.monotonic):
        self.redis, self.high_water_pct, self.clock = redis, high_water_pct, clock
        self.checked_at, self.is_busy, self.usable = None, False, True

    def busy(self):
        if not self.usable or self.high_water_pct >= 100:
            return False
        now = self.clock()
        if self.checked_at is None or now - self.checked_at >= MEMORY_CHECK_EVERY_S:
            self.checked_at = now
            try:
                info = self.redis.info("memory")
            except ResponseError as exc:  # INFO not allowed to this Redis user
                log.warning("Redis memory guard off: INFO memory refused (%s)", exc)
                self.usable = False
                return False
            limit = int(info.get("maxmemory", 0))
            used = int(info.get("used_memory", 0))
            self.is_busy = limit > 0 and used * 100 >= limit * self.high_water_pct
        return self.is_busy


_guards: dict[int, MemoryGuard] = {}


def memory_guard(redis, settings):
    """The process's :class:`MemoryGuard` of this Redis client."""
    guard = _guards.get(id(redis))
    if guard is None or guard.redis is not redis:
        guard = _guards[id(redis)] = MemoryGuard(redis, settings.redis_memory_high_water_pct)
    return guard


def create(svc, *, kind, owner, params, address=None):
    """``svc.store.create`` behind the quotas; raises :class:`Refused` (or the
    store's ``TooManyActive``). ``svc`` has ``settings``, ``redis``, ``store`` and
    ``identity``; ``address`` is the client's (None: no per-address limit)."""
    settings, redis, store = svc.settings, svc.redis, svc.store
    if memory_guard(redis, settings).busy():
        raise Refused(
            503, "busy", "The service is storing too much right now; try again later.", BUSY_RETRY_S
        )
    addr = None if address is None else address_key(address)
    if kind == "export":
        check_export_quota(redis, settings, owner, addr)
    anonymous = svc.identity.mode == "session"
    try:
        return store.create(
            kind=kind,
            owner=owner,
            params=params,
            max_active=settings.max_active_tasks,
            retention_s=settings.anonymous_task_retention_s if anonymous else None,
            address=addr,
            max_active_per_address=settings.max_active_tasks_per_ip,
        )
    except TooManyActiveAtAddress as exc:
        raise Refused(
            429,
            "too_many_active",
            f"At most {exc.limit} queued or running tasks at once from one address; "
            "wait for one to finish or cancel one.",
            5,
        ) from None


def check_export_quota(redis, settings, owner, addr=None, now=None):
    """Refuse a new export when the exports volume is short of space or its bytes
    are over a cap (from a worker's figures, :func:`report_export_usage`)."""
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(usage_key(settings))
    pipe.hget(owners_key(settings), owner)
    pipe.hget(addrs_key(settings), addr or "")
    usage, mine, theirs = pipe.execute()
    if not usage or now - float(usage.get("at", 0)) > USAGE_STALE_S:
        return  # no worker measures the volume: the running export's own check stays
    free, floor = int(usage["free"]), int(usage["floor"])
    if free <= floor:
        raise Refused(
            507,
            "storage_full",
            "The exports volume is nearly full; try again later.",
            BUSY_RETRY_S,
        )
    cap, used, ttl = int(usage["cap"]), int(usage["used"]), settings.export_ttl_s
    if cap and used >= cap:
        raise Refused(
            507,
            "storage_full",
            "Stored exports reached their total cap (EXPORT_QUOTA_BYTES); try again later.",
            float(usage["oldest"]) + ttl - now,
        )
    for stored, cap, whose in (
        (mine, settings.export_quota_per_owner_bytes, "Your"),
        (theirs, settings.export_quota_per_ip_bytes, "Your address's"),
    ):
        if not stored or not cap:
            continue
        size, oldest = stored.split()
        if int(size) >= cap:
            raise Refused(
                429,
                "quota_exceeded",
                f"{whose} stored exports reached {cap:,} bytes; delete one "
                "(DELETE /api/tasks/<id>) or wait for one to expire.",
                float(oldest) + ttl - now,
            )


def usage_key(settings):
    return Keys(settings.namespace).exports_usage


def owners_key(settings):
    return Keys(settings.namespace).exports_owners


def addrs_key(settings):
    return Keys(settings.namespace).exports_addrs


def forgotten_key(settings):
    return Keys(settings.namespace).exports_forgotten


def volume(settings):
    """``(size, free, floor, cap)`` of the exports volume in bytes: the free-space
    floor is EXPORT_MIN_FREE_PCT of its size, the cap EXPORT_QUOTA_BYTES or, when
    that is 0, half its size."""
    st = os.statvfs(settings.export_dir)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    floor = size * settings.export_min_free_pct // 100
    return size, free, floor, settings.export_quota_bytes or size // 2


def check_free_space(settings):
    """Raise ``storage_full`` in a running export once the volume is down to its floor."""
    _size, free, floor, _cap = volume(settings)
    if free <= floor:
        raise JobError(
            "storage_full", "The exports volume is nearly full; the export stopped. Run it later."
        )


def report_export_usage(redis, store, settings, now=None):
    """Measure the exports volume and its files (per owner) for the web's guards."""
    now = time.time() if now is None else now
    os.makedirs(settings.export_dir, exist_ok=True)
    size, free, floor, cap = volume(settings)
    files = []  # (task id, bytes, mtime)
    for entry in os.scandir(settings.export_dir):
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        if entry.is_file():
            files.append((entry.name.lstrip(".").split(".")[0], st.st_size, st.st_mtime))
    ids = sorted({task_id for task_id, _, _ in files})
    pipe = redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(store.keys.task(task_id), "owner", "addr")
    whose = dict(zip(ids, pipe.execute()))
    per = {owners_key(settings): {}, addrs_key(settings): {}}
    for task_id, nbytes, mtime in files:
        for key, name in zip(per, whose.get(task_id) or ()):
            if name:
                total, oldest = per[key].get(name, (0, mtime))
                per[key][name] = (total + nbytes, min(oldest, mtime))
    usage = {
        "size": size,
        "free": free,
        "floor": floor,
        "cap": cap,
        "used": sum(nbytes for _, nbytes, _ in files),
        "oldest": min((mtime for _, _, mtime in files), default=now),
        "at": f"{now:.3f}",
    }
    pipe = redis.pipeline(transaction=True)
    for key, sums in per.items():
        pipe.delete(key)
        if sums:
            pipe.hset(key, mapping={n: f"{t} {oldest:.3f}" for n, (t, oldest) in sums.items()})
            pipe.expire(key, USAGE_STALE_S * 2)
    pipe.hset(usage_key(settings), mapping=usage)
    pipe.expire(usage_key(settings), USAGE_STALE_S * 2)
    pipe.execute()
    return usage


def forget_export(redis, settings, task_id, rec):
    """Queue the export file of a removed task for deletion by a worker."""
    result = rec.get("result") or ""
    fmt = next((f for f in protocol.EXPORT_FORMATS if f'.{f}"' in result), None)
    if rec.get("kind") == "export" and fmt is not None:
        name = protocol.export_file_name(task_id, rec["fence"], fmt)
        redis.sadd(forgotten_key(settings), name)


def remove_forgotten_exports(redis, settings):
    """Delete the files :func:`forget_export` queued; returns how many were removed."""
    removed = 0
    for name in redis.spop(forgotten_key(settings), MAX_FORGOTTEN_PER_ROUND) or ():
        if os.sep in name or name.startswith("."):
            continue  # only names export_file_name made
        try:
            os.unlink(os.path.join(settings.export_dir, name))
            removed += 1
        except FileNotFoundError:
            pass  # expired and swept already
    return removed

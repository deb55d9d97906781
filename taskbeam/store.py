"""Durable task state in Redis: a snapshot hash and an append-only event log.

Keys (``ns`` is TASKBEAM_NAMESPACE):

- ``ns:task:<id>``            hash, the snapshot plus owner, params, attempts, cancel flag,
                              ``fence`` (the current run's token) and ``last_emit``
- ``ns:task:<id>:events``     stream, one entry per event, entry id ``<seq>-0``
- ``ns:owner:<owner>``        sorted set of the owner's task ids by creation time
- ``ns:owner:<owner>:active`` set of the owner's tasks that have not finished
- ``ns:addr:<address>:active``  sorted set of the unfinished tasks a client address
                              created, by creation time (taskbeam.quotas)
- ``ns:active``               sorted set of every unfinished task id by creation time
- ``ns:queued``               sorted set of the task ids not yet started, by creation time
                              (a task's queue position is its rank here)
- ``ns:leases``               sorted set of running task ids by lease expiry (Redis clock)
- ``ns:workers``              sorted set of worker host names by when each last consumed
- ``ns:socketio:main-only``   set (with a short TTL) while a web process reads only the
                              main message-queue channel (``mq_listener``)

A new task's keys expire after ``TASK_RETENTION_S`` plus the task time limit even
if it never runs; the terminal event sets them to expire ``TASK_RETENTION_S``
later. Every event is written here *before* it is published, so a subscriber that
missed the live message reads it back from the stream.

Runs are fenced: claiming a run increments the task's ``fence`` and returns it as
the run's token. Appends, renewals and releases that carry a token are refused
unless it is the current one and the run's lease is still in ``ns:leases``, so a
run that was frozen past its lease (and handed over) writes nothing after it
thaws. The scripts name the owner's and the tasks' keys from their contents,
which a single Redis (or a replicated one) allows; Redis Cluster does not.
"""

import json
import math
import secrets
import socket
import time
import uuid

import redis as redis_lib

from . import protocol, sentinel

# A worker counts as alive if it reported within this many seconds (it reports every
# 2 s while its consumer runs; see worker.py).
WORKER_ALIVE_WINDOW_S = 15.0

_TERMINAL = """
local function terminal(state)
  return state == 'succeeded' or state == 'failed' or state == 'cancelled'
end
"""

# Stores a task and its first event unless the owner already has ``max_active``
# unfinished tasks (0) or its client address ``ARGV[9]`` (-1; taskbeam.quotas); ids of
# tasks that finished or expired unfinished are forgotten on the way.
_CREATE = (
    _TERMINAL
    + """
local task, events, owner_tasks, owner_active, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local queued = KEYS[6]
local id, now, max_active = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, owner_ttl, task_prefix = ARGV[4], ARGV[5], ARGV[8]
if max_active > 0 and redis.call('SCARD', owner_active) >= max_active then
  for _, other in ipairs(redis.call('SMEMBERS', owner_active)) do
    local state = redis.call('HGET', task_prefix .. other, 'state')
    if not state or terminal(state) then redis.call('SREM', owner_active, other) end
  end
  if redis.call('SCARD', owner_active) >= max_active then return 0 end
end
local addr_active, addr_max = KEYS[7], tonumber(ARGV[9])
if addr_max > 0 and redis.call('ZCARD', addr_active) >= addr_max then
  for _, other in ipairs(redis.call('ZRANGE', addr_active, 0, -1)) do
    local state = redis.call('HGET', task_prefix .. other, 'state')
    if not state or terminal(state) then redis.call('ZREM', addr_active, other) end
  end
  if redis.call('ZCARD', addr_active) >= addr_max then return -1 end
end
for i = 10, #ARGV, 2 do redis.call('HSET', task, ARGV[i], ARGV[i + 1]) end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[6], '1-0', 'e', ARGV[7])
redis.call('EXPIRE', task, ttl)
redis.call('EXPIRE', events, ttl)
redis.call('ZADD', owner_tasks, now, id)
redis.call('EXPIRE', owner_tasks, owner_ttl)
redis.call('SADD', owner_active, id)
redis.call('EXPIRE', owner_active, owner_ttl)
redis.call('ZADD', active, now, id)
redis.call('ZADD', queued, now, id)
if addr_max > 0 then
  redis.call('ZADD', addr_active, now, id)
  redis.call('EXPIRE', addr_active, ttl)
end
return 1
"""
)

# Python's json.dumps(s) (ensure_ascii, its escapes, lower-case hex), for the
# in-script publish: the stock emitter's text, where cjson escapes '/' and keeps UTF-8.
_PY_JSON = r"""
local PY_ESC = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
local function py_u(cp)
  if cp < 65536 then return string.format('\\u%04x', cp) end
  cp = cp - 65536
  return string.format('\\u%04x\\u%04x', 55296 + math.floor(cp / 1024), 56320 + cp % 1024)
end
local function py_char(c)  -- one escaped ASCII byte, or one UTF-8 sequence
  local n = #c
  if n == 1 then return PY_ESC[c] or py_u(c:byte()) end
  local cp = c:byte(1) % (n == 2 and 32 or n == 3 and 16 or 8)
  for i = 2, n do cp = cp * 64 + c:byte(i) % 64 end
  return py_u(cp)
end
local function py_str(s)
  return '"' .. s:gsub('[%z\1-\31"\\\127]', py_char):gsub('[\192-\247][\128-\191]*', py_char)
    .. '"'
end
"""

# Increments seq, applies the patch and appends the event in one atomic step.
# Refuses to write after a terminal state, which is what makes the terminal
# event unique however many workers or retries race for it; refuses a run whose
# token is not the current one (fencing); and answers a retried emit whose first
# try was applied with that event instead of writing it twice.
#
# With a channel in ARGV[8], the script also PUBLISHes the event inside the external
# emitter's message (ARGV[10] .. event .. ARGV[11]), the event rendered as Python's
# json.dumps renders it, so the bytes are the stock emitter's own: one round trip for
# the worker, and no event can be stored but never published. It goes to the task's
# room channel (ARGV[9]), which only web processes holding the room read, unless a
# web reads the main channel only (KEYS[6] exists): then to the main channel ARGV[8].
# A retry answered from the log publishes nothing: its first try already did.
_APPEND = (
    _TERMINAL
    + _PY_JSON
    + """
local task, events, leases, active, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local emit_id, token, channel = ARGV[5], ARGV[6], ARGV[8]
local cur = redis.call('HMGET', task, 'state', 'id', 'fence', 'last_emit', 'owner')
if not cur[1] then return {-1, ''} end
if emit_id ~= '' and cur[4] == emit_id then
  -- Rewritten (same value) so that a WAIT on this connection covers the first try.
  redis.call('HSET', task, 'last_emit', emit_id)
  local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1]
  return {tonumber(redis.call('HGET', task, 'seq')), last[2][2],
          redis.call('HGET', task, 'cancel') or '0'}
end
if terminal(cur[1]) then return {0, cur[1]} end
if token ~= '' and (cur[3] ~= token or not redis.call('ZSCORE', leases, cur[2])) then
  return {-2, 'fenced'}
end
-- done/total (a progress report's counts) go into this event only, not the snapshot.
local counts = {}
for i = 12, #ARGV, 2 do
  if ARGV[i] == 'done' or ARGV[i] == 'total' then
    counts[#counts + 1] = ARGV[i]
    counts[#counts + 1] = ARGV[i + 1]
  else
    redis.call('HSET', task, ARGV[i], ARGV[i + 1])
  end
end
if emit_id ~= '' then redis.call('HSET', task, 'last_emit', emit_id) end
local seq = redis.call('HINCRBY', task, 'seq', 1)
redis.call('HSET', task, 'updated_at', ARGV[2])
local f = redis.call('HMGET', task, 'id', 'state', 'progress', 'message', 'result', 'error',
                     'cancel')
if f[2] ~= cur[1] then  -- a state change; progress events skip all of this
  if cur[1] == 'queued' then redis.call('ZREM', queued, f[1]) end
  if f[2] == 'running' then redis.call('HSETNX', task, 'started_at', ARGV[2]) end
  if terminal(f[2]) then redis.call('HSET', task, 'finished_at', ARGV[2]) end
end
-- The event's JSON with the given string encoder and separators.
local function event_of(str, colon, comma)
  local e = '{"task_id"' .. colon .. str(f[1]) .. comma .. '"seq"' .. colon .. seq
    .. comma .. '"state"' .. colon .. str(f[2]) .. comma .. '"progress"' .. colon .. f[3]
    .. comma .. '"message"' .. colon .. str(f[4]) .. comma .. '"ts"' .. colon .. ARGV[1]
  for i = 1, #counts, 2 do e = e .. comma .. '"' .. counts[i] .. '"' .. colon .. counts[i + 1] end
  if f[2] == 'succeeded' and f[5] then e = e .. comma .. '"result"' .. colon .. f[5] end
  if f[2] == 'failed' and f[6] then e = e .. comma .. '"error"' .. colon .. f[6] end
  return e .. '}'
end
local event = event_of(cjson.encode, ':', ',')
redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], seq .. '-0', 'e', event)
if terminal(f[2]) then
  -- A task of an anonymous owner keeps its own, shorter retention (quotas.py).
  local keep = redis.call('HGET', task, 'retention') or ARGV[4]
  redis.call('EXPIRE', task, keep)
  redis.call('EXPIRE', events, keep)
  redis.call('ZREM', active, f[1])
  if cur[5] then redis.call('SREM', ARGV[7] .. cur[5] .. ':active', f[1]) end
end
if channel ~= '' then
  if ARGV[9] ~= '' and redis.call('EXISTS', KEYS[6]) == 0 then channel = ARGV[9] end
  redis.call('PUBLISH', channel, ARGV[10] .. event_of(py_str, ': ', ', ') .. ARGV[11])
end
return {seq, event, f[7] or '0'}
"""
)

# The same choice of channel for a message published after its append (a writer
# that waits for replicas first): the room channel ARGV[2] unless KEYS[1] exists.
_PUBLISH = """
local channel = ARGV[1]
if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[1]) == 0 then channel = ARGV[2] end
return redis.call('PUBLISH', channel, ARGV[3])
"""

# Removes a finished task of its owner and every key naming it, in one step:
# -1 no such task (or not the owner's), 0 not finished yet, 1 removed.
_REMOVE_FINISHED = (
    _TERMINAL
    + """
local task, events, owner_tasks, owner_active, active, queued, leases =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local cur = redis.call('HMGET', task, 'state', 'owner')
if not cur[1] or cur[2] ~= ARGV[2] then return -1 end
if not terminal(cur[1]) then return 0 end
redis.call('DEL', task, events)
for _, key in ipairs({owner_tasks, active, queued, leases}) do redis.call('ZREM', key, ARGV[1]) end
redis.call('SREM', owner_active, ARGV[1])
return 1
"""
)

# Leases use Redis's clock, so workers on hosts with skewed clocks agree.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""

# -1: no such task; -2: already finished; 0: a live run holds the lease;
# otherwise the new run's token.
_CLAIM_RUN = (
    _TERMINAL
    + _NOW
    + """
local state = redis.call('HGET', KEYS[2], 'state')
if not state then return -1 end
if terminal(state) then return -2 end
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expiry and tonumber(expiry) > now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('HINCRBY', KEYS[2], 'fence', 1)
"""
)

# 1 if the run still holds the lease (now extended), 0 if it lost it.
_RENEW_LEASE = (
    _NOW
    + """
local fence = redis.call('HGET', KEYS[2], 'fence')
if fence ~= ARGV[2] or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# Only the current run may give its lease up: a thawed loser must not free the
# lease of the run that replaced it.
_RELEASE_LEASE = """
if redis.call('HGET', KEYS[2], 'fence') == ARGV[2] then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# Takes expired leases out of the set in one step, so exactly one reaper gets each.
_REAP = (
    _NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return ids
"""
)


class TaskGone(LookupError):
    """The task does not exist (never created, or expired)."""


class TaskFinished(RuntimeError):
    """The task already reached a terminal state; nothing more is written."""

    def __init__(self, state):
        super().__init__(f"task already {state}")
        self.state = state


class LeaseLost(BaseException):
    """This run's lease passed to another run: it must stop and write nothing more.

    A ``BaseException``, like ``KeyboardInterrupt``, so that a job's own
    ``except Exception`` cannot swallow it and carry on writing.
    """


class TooManyActive(RuntimeError):
    """The owner already has ``MAX_ACTIVE_TASKS`` queued or running tasks."""

    def __init__(self, limit):
        super().__init__(f"at most {limit} active tasks")
        self.limit = limit


class TooManyActiveAtAddress(TooManyActive):
    """The client address already has ``MAX_ACTIVE_TASKS_PER_IP`` of them."""


class NotReplicated(redis_lib.TimeoutError):
    """A write reached the primary but not ``REDIS_WAIT_REPLICAS`` replicas in time.

    Transient (a ``TimeoutError``): the emitter retries, and the retry's WAIT
    covers the first try (see ``_APPEND``), or, after a failover that lost it,
    writes it again on the new primary with the same seq.
    """


# A Redis host that is gone without a word (power lost, partitioned, failed over)
# resets no connection: a command or a BRPOP would wait on it until TCP gives up,
# which takes minutes. With these, data unacknowledged for 3 s, or keepalives
# unanswered on an idle connection, break the connection, and the client reconnects
# (under Sentinel, to the new primary). A busy but live Redis still acknowledges:
# only socket_timeout bounds that wait.
DEAD_PEER_OPTIONS = {
    "socket_keepalive": True,
    "socket_keepalive_options": {
        socket.TCP_KEEPIDLE: 5,
        socket.TCP_KEEPINTVL: 1,
        socket.TCP_KEEPCNT: 3,
        socket.TCP_USER_TIMEOUT: 3_000,
    },
}


def redis_tls(settings):
    """TLS options of every Redis client, for a ``rediss://`` or ``rediss+sentinel://``
    REDIS_URL (see taskbeam.sentinel.tls_options)."""
    return sentinel.tls_options(settings.redis_url, settings.redis_tls_ca_file)


def redis_client(settings, max_connections=None):
    """The Redis client both sides use. With ``max_connections`` the pool blocks
    (up to 10 s) instead of opening a connection per waiting greenlet."""
    options = dict(
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


def new_task_id():
    return secrets.token_urlsafe(12)


def _count_text(count):
    # A JSON number, spliced into the event as it is: 20000, not 20000.0.
    return str(int(count)) if float(count).is_integer() else repr(float(count))


def _progress_text(progress):
    # Stored as the JSON number the events carry.
    return repr(float(progress))


def _page_of(entries, after, limit):
    """``(events, next_after, has_more)`` from XRANGE's ``limit + 1`` entries."""
    page = entries[:limit]
    next_after = int(page[-1][0].split("-")[0]) if page else after
    return [fields["e"] for _, fields in page], next_after, len(entries) > limit


class TaskStore:
    """Reads and writes tasks. Shared by the web app and the worker.

    :param redis: a ``redis.Redis`` client (``decode_responses=True``).
    :param settings: :class:`taskbeam.config.Settings`.
    """

    def __init__(self, redis, settings):
        self.redis = redis
        self.ns = settings.namespace
        self.maxlen = settings.event_log_maxlen
        self.retention_s = settings.task_retention_s
        # A task that never runs still goes away; one that runs gets its time limit.
        self.unfinished_ttl_s = settings.task_retention_s + settings.task_time_limit_s
        # Sentinel mode: writes a client may see wait for this many replicas.
        self.wait_replicas = settings.redis_wait_replicas
        self.wait_timeout_ms = settings.redis_wait_timeout_ms
        self._create = redis.register_script(_CREATE)
        self._append = redis.register_script(_APPEND)
        self._claim_run = redis.register_script(_CLAIM_RUN)
        self._renew_lease = redis.register_script(_RENEW_LEASE)
        self._release_lease = redis.register_script(_RELEASE_LEASE)
        self._reap = redis.register_script(_REAP)
        self._remove_finished = redis.register_script(_REMOVE_FINISHED)
        self._publish = redis.register_script(_PUBLISH)
        self.leases_key = f"{self.ns}:leases"
        self.active_key = f"{self.ns}:active"
        self.queued_key = f"{self.ns}:queued"
        self.workers_key = f"{self.ns}:workers"
        self.main_only_key = f"{self.ns}:socketio:main-only"

    def task_key(self, task_id):
        return f"{self.ns}:task:{task_id}"

    def events_key(self, task_id):
        return f"{self.ns}:task:{task_id}:events"

    def owner_key(self, owner):
        return f"{self.ns}:owner:{owner}"

    def owner_active_key(self, owner):
        return f"{self.ns}:owner:{owner}:active"

    def address_active_key(self, address):
        return f"{self.ns}:addr:{address}:active"

    def _keys_of(self, task_id, owner):
        """The keys a task's creation and removal touch (the Lua scripts' KEYS)."""
        return [
            self.task_key(task_id),
            self.events_key(task_id),
            self.owner_key(owner),
            self.owner_active_key(owner),
            self.active_key,
            self.queued_key,
        ]

    def create(
        self,
        *,
        kind,
        owner,
        params,
        max_active=0,
        now=None,
        retention_s=None,
        address=None,
        max_active_per_address=0,
    ):
        """Store a new task with its first event (seq 1, ``queued``); return its snapshot.

        :param max_active: refuse (:class:`TooManyActive`) when the owner already has
                           this many unfinished tasks; 0 for no limit.
        :param retention_s: how long the task stays after it ends, if not
                            TASK_RETENTION_S (anonymous owners, taskbeam.quotas).
        :param address: the creating client's address key, kept for the per-address
                        export quota (taskbeam.quotas).
        :param max_active_per_address: refuse (:class:`TooManyActiveAtAddress`) when
                                       ``address`` already has this many; 0: no limit.
        """
        now = time.time() if now is None else now
        task_id = new_task_id()
        stamp = protocol.iso_utc(now)
        fields = {
            "id": task_id,
            "kind": kind,
            "owner": owner,
            "params": json.dumps(params),
            "state": protocol.QUEUED,
            "progress": _progress_text(0),
            "message": "Queued",
            "seq": 1,
            "created_at": stamp,
            "updated_at": stamp,
            "attempts": 0,
            "cancel": 0,
            "fence": 0,
        }
        if address is not None:
            fields["addr"] = address
        retention = self.retention_s
        if retention_s is not None and retention_s < self.retention_s:
            retention = fields["retention"] = retention_s
        event = {
            "task_id": task_id,
            "seq": 1,
            "state": protocol.QUEUED,
            "progress": 0.0,
            "message": "Queued",
            "ts": round(now, 6),
        }
        args = [
            task_id,
            f"{now:.6f}",
            max_active,
            self.unfinished_ttl_s - self.retention_s + retention,
            retention * 2,
            self.maxlen,
            json.dumps(event),
            self.task_key(""),
            max_active_per_address if address is not None else 0,
        ]
        for item in fields.items():
            args += item
        keys = [*self._keys_of(task_id, owner), self.address_active_key(address or "")]
        try:
            created = int(self._call(self._create, keys, args))
        except NotReplicated:
            # The caller answers 503: no task may stay behind for the sweeper to run.
            # If the primary is gone instead, so is the task.
            self.delete(task_id, owner)
            raise
        if created == -1:
            raise TooManyActiveAtAddress(max_active_per_address)
        if not created:
            raise TooManyActive(max_active)
        return self.snapshot_of({k: str(v) for k, v in fields.items()})

    def delete(self, task_id, owner):
        """Remove a task that could not be enqueued, so no half-created task remains."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.task_key(task_id), self.events_key(task_id))
        pipe.zrem(self.leases_key, task_id)
        pipe.zrem(self.owner_key(owner), task_id)
        pipe.srem(self.owner_active_key(owner), task_id)
        pipe.zrem(self.active_key, task_id)
        pipe.zrem(self.queued_key, task_id)
        pipe.execute()

    def remove_finished(self, task_id, owner):
        """Remove a terminal task of ``owner`` with its events, atomically.

        :returns: True if removed; False if the task is not finished yet.
        :raises TaskGone: no such task, or not ``owner``'s.
        """
        keys = [*self._keys_of(task_id, owner), self.leases_key]
        code = int(self._remove_finished(keys=keys, args=[task_id, owner]))
        if code == -1:
            raise TaskGone(task_id)
        return code == 1

    def add_queue_positions(self, snapshots, now=None):
        """Set ``queue_position`` (1 = next to start) on the queued ones among
        ``snapshots``: one ZRANK each, O(log n). Entries of tasks that expired
        before they started are dropped first, so they do not count."""
        queued = [s for s in snapshots if s["state"] == protocol.QUEUED]
        if not queued:
            return snapshots
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.queued_key, "-inf", now - self.unfinished_ttl_s)
        for snap in queued:
            pipe.zrank(self.queued_key, snap["id"])
        for snap, rank in zip(queued, pipe.execute()[1:]):
            if rank is not None:
                snap["queue_position"] = rank + 1
        return snapshots

    def append(self, task_id, ts=None, *, token=None, emit_id=None, publish=None, **patch):
        """Apply ``patch`` (state, progress, message, result, error, worker...) and log
        the event atomically.

        :param token: the writing run's token (:meth:`claim_run`); None for writers
                      outside a run (a cancel while queued, the sweeper).
        :param emit_id: names this write, so that a retry after a lost reply does not
                        write it twice.
        :param publish: ``(channel, room_channel, head, tail)``: also PUBLISH
                        ``head + event + tail`` in the same step (the external emitter's
                        message, :class:`taskbeam.emitter.StockEnvelope`), to
                        ``room_channel`` unless a web reads ``channel`` only (see
                        :meth:`publish`); None publishes nothing.
        :returns: ``(event_json, cancel_requested)``.
        :raises TaskGone: the task does not exist.
        :raises TaskFinished: the task is already terminal; nothing was written.
        :raises LeaseLost: ``token`` is not the current run's; nothing was written.
        """
        ts = time.time() if ts is None else ts
        args = [
            # To the microsecond, as json.dumps writes that float (the published text).
            repr(float(f"{ts:.6f}")),
            protocol.iso_utc(ts),
            self.maxlen,
            self.retention_s,
            emit_id or "",
            "" if token is None else str(token),
            self.owner_key(""),
            *(publish or ("", "", "", "")),
        ]
        for field, value in patch.items():
            if field == "progress":
                value = _progress_text(value)
            elif field in ("done", "total"):
                if not math.isfinite(value):
                    continue
                value = _count_text(value)
            elif field in ("result", "error"):
                value = json.dumps(value)
            args += [field, value]
        keys = [
            self.task_key(task_id),
            self.events_key(task_id),
            self.leases_key,
            self.active_key,
            self.queued_key,
            self.main_only_key,
        ]
        reply = self._call(self._append, keys, args)
        code = int(reply[0])
        if code == -1:
            raise TaskGone(task_id)
        if code == 0:
            raise TaskFinished(reply[1])
        if code == -2:
            raise LeaseLost(task_id)
        return reply[1], reply[2] == "1"

    def publish(self, channel, room_channel, message):
        """PUBLISH ``message`` to ``room_channel``, read only by the web processes that
        hold the room, or to the main ``channel`` while some web reads nothing else
        (``main_only_key`` exists: the stock listener, which cannot subscribe to more)."""
        return self._publish(keys=[self.main_only_key], args=[channel, room_channel, message])

    def _call(self, script, keys, args):
        """Run a Lua script; in Sentinel mode (``wait_replicas``) return only once
        its writes are on that many replicas, else raise :class:`NotReplicated`.

        Without replicas to wait for this is the script call alone: the hot
        path of a single Redis is unchanged.
        """
        if not self.wait_replicas:
            return script(keys=keys, args=args)
        try:
            reply, acks = self._script_then_wait(script, keys, args)
        except redis_lib.exceptions.NoScriptError:
            # A new primary (scripts are not replicated) or a restarted one.
            self.redis.script_load(script.script)
            reply, acks = self._script_then_wait(script, keys, args)
        if int(acks) < self.wait_replicas:
            raise NotReplicated(
                f"on {acks} of {self.wait_replicas} replicas after {self.wait_timeout_ms} ms"
            )
        return reply

    def _script_then_wait(self, script, keys, args):
        # One connection for both: WAIT counts the writes of its own connection.
        pipe = self.redis.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        return pipe.execute()

    def record(self, task_id):
        """The raw hash of a task, or None."""
        return self.redis.hgetall(self.task_key(task_id)) or None

    def owned_record(self, task_id, owner):
        """The raw hash if it exists and belongs to ``owner``; else None (no hint which)."""
        rec = self.record(task_id) if task_id else None
        if rec is None or not owner or not secrets.compare_digest(rec.get("owner", ""), owner):
            return None
        return rec

    def list_for_owner(self, owner, limit=200):
        """The owner's snapshots, newest first; forgets ids whose task has expired."""
        ids = self.redis.zrevrange(self.owner_key(owner), 0, limit - 1)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hgetall(self.task_key(task_id))
        snapshots, gone = [], []
        for task_id, rec in zip(ids, pipe.execute()):
            if rec:
                snapshots.append(self.snapshot_of(rec))
            else:
                gone.append(task_id)
        if gone:
            self.redis.zrem(self.owner_key(owner), *gone)
        return snapshots

    def events_after(self, task_id, after):
        """Every stored event with ``seq > after``, ascending."""
        entries = self.redis.xrange(self.events_key(task_id), min=f"{after + 1}-0", max="+")
        return [json.loads(fields["e"]) for _, fields in entries]

    def events_page(self, task_id, after, limit):
        """Up to ``limit`` stored events with ``seq > after`` as their stored JSON text
        (not parsed: readers splice it). Returns ``(events, next_after, has_more)``;
        ``next_after`` is the last returned seq (``after`` if none)."""
        entries = self.redis.xrange(
            self.events_key(task_id), min=f"{after + 1}-0", max="+", count=limit + 1
        )
        return _page_of(entries, after, limit)

    def record_and_events_page(self, task_id, after, limit):
        """:meth:`record` and :meth:`events_page` in one round trip (a subscribe's reads)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.task_key(task_id))
        pipe.xrange(self.events_key(task_id), min=f"{after + 1}-0", max="+", count=limit + 1)
        rec, entries = pipe.execute()
        return rec or None, *_page_of(entries, after, limit)

    def request_cancel(self, task_id):
        self.redis.hset(self.task_key(task_id), "cancel", 1)

    def count_attempt(self, task_id):
        """Count one more start of the task; returns how many starts there were."""
        return int(self.redis.hincrby(self.task_key(task_id), "attempts", 1))

    def claim_run(self, task_id, lease_s):
        """Take the run lease of a task and return the new run's token.

        :returns: the token (an int > 0), or None if a live run holds the lease.
        :raises TaskGone: the task does not exist.
        :raises TaskFinished: the task already ended.
        """
        # Replicated before the run writes: a failover must not take its lease away.
        code = int(
            self._call(
                self._claim_run, [self.leases_key, self.task_key(task_id)], [task_id, lease_s]
            )
        )
        if code == -1:
            raise TaskGone(task_id)
        if code == -2:
            raise TaskFinished("finished")
        return code or None

    def renew_lease(self, task_id, token, lease_s):
        """Extend the run's lease; False once the run has lost it (it must stop)."""
        return bool(
            self._renew_lease(
                keys=[self.leases_key, self.task_key(task_id)], args=[task_id, token, lease_s]
            )
        )

    def release_lease(self, task_id, token):
        """Give up the lease, if the run ``token`` still holds it."""
        self._release_lease(keys=[self.leases_key, self.task_key(task_id)], args=[task_id, token])

    def reap_expired_leases(self, limit=100):
        """Ids of runs whose worker stopped renewing; each is returned to one caller only."""
        return self._reap(keys=[self.leases_key], args=[limit])

    def restore_lease(self, task_id):
        """Put back an expired lease that could not be handed over, so the next
        reaping round tries again (unless a run claimed the task meanwhile)."""
        self.redis.zadd(self.leases_key, {task_id: 0}, nx=True)

    def unfinished_without_run(self, older_than_s, limit=500, now=None):
        """Unfinished tasks created over ``older_than_s`` ago that hold no lease.

        Forgets ids whose task expired or finished. Returns raw hashes.
        """
        now = time.time() if now is None else now
        ids = self.redis.zrangebyscore(
            self.active_key, "-inf", now - older_than_s, start=0, num=limit
        )
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.hgetall(self.task_key(task_id))
            pipe.zscore(self.leases_key, task_id)
        replies = pipe.execute()
        found, done = [], []
        for task_id, rec, lease in zip(ids, replies[::2], replies[1::2]):
            if not rec or rec["state"] in protocol.TERMINAL_STATES:
                done.append(task_id)
            elif lease is None:
                found.append(rec)
        if done:
            self.redis.zrem(self.active_key, *done)
        return found

    def worker_alive(self, name, now=None):
        """Record that worker ``name`` is consuming; names silent for a day are dropped."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.workers_key, {name: now})
        pipe.zremrangebyscore(self.workers_key, "-inf", now - 86_400)
        pipe.execute()

    def operator_gauges(self, now=None):
        """What an autoscaler or an operator watches, for the whole deployment:
        tasks not yet started and the age of the oldest, runs holding a lease,
        and workers that reported within :data:`WORKER_ALIVE_WINDOW_S`."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.queued_key)
        pipe.zrange(self.queued_key, 0, 0, withscores=True)
        pipe.zcard(self.leases_key)
        pipe.zcount(self.workers_key, now - WORKER_ALIVE_WINDOW_S, "+inf")
        queued, oldest, running, workers = pipe.execute()
        return {
            "tasks_queued": queued,
            "oldest_queued_age_seconds": round(max(now - oldest[0][1], 0.0), 3) if oldest else 0,
            "tasks_running": running,
            "workers_alive": workers,
        }

    @staticmethod
    def new_emit_id():
        return uuid.uuid4().hex

    @staticmethod
    def snapshot_of(rec):
        """The contract's snapshot from a stored hash; absent fields are omitted."""
        snap = {
            "id": rec["id"],
            "kind": rec["kind"],
            "state": rec["state"],
            "progress": float(rec["progress"]),
            "message": rec["message"],
            "seq": int(rec["seq"]),
            "created_at": rec["created_at"],
            "updated_at": rec["updated_at"],
        }
        if rec["state"] == protocol.SUCCEEDED and rec.get("result"):
            snap["result"] = json.loads(rec["result"])
        if rec["state"] == protocol.FAILED and rec.get("error"):
            snap["error"] = json.loads(rec["error"])
        if rec.get("worker"):
            snap["worker"] = rec["worker"]
        for field in ("started_at", "finished_at"):
            if rec.get(field):
                snap[field] = rec[field]
        if rec.get("params"):
            snap["params"] = json.loads(rec["params"])
        return snap

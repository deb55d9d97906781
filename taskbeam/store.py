"""Durable task state in Redis: a snapshot hash and an append-only event log.

Keys (``ns`` is TASKBEAM_NAMESPACE):

- ``ns:task:<id>``          hash, the snapshot plus owner, params, attempts, cancel flag
- ``ns:task:<id>:events``   stream, one entry per event, entry id ``<seq>-0``
- ``ns:owner:<owner>``      sorted set of the owner's task ids by creation time
- ``ns:leases``             sorted set of running task ids by lease expiry (Redis clock)

Both task keys expire ``TASK_RETENTION_S`` after the terminal event. Every event
is written here *before* it is published, so a subscriber that missed the live
message reads it back from the stream.
"""
import json
import secrets
import time

import redis as redis_lib

from . import protocol

# Increments seq, applies the patch and appends the event in one atomic step.
# Refuses to write after a terminal state, which is what makes the terminal
# event unique however many workers or retries race for it.
_APPEND = """
local task, events = KEYS[1], KEYS[2]
local state = redis.call('HGET', task, 'state')
if not state then return {-1, ''} end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  return {0, state}
end
for i = 5, #ARGV, 2 do redis.call('HSET', task, ARGV[i], ARGV[i + 1]) end
local seq = redis.call('HINCRBY', task, 'seq', 1)
redis.call('HSET', task, 'updated_at', ARGV[2])
local f = redis.call('HMGET', task, 'id', 'state', 'progress', 'message', 'result', 'error', 'cancel')
local event = '{"task_id":' .. cjson.encode(f[1]) .. ',"seq":' .. seq
  .. ',"state":' .. cjson.encode(f[2]) .. ',"progress":' .. f[3]
  .. ',"message":' .. cjson.encode(f[4]) .. ',"ts":' .. ARGV[1]
if f[2] == 'succeeded' and f[5] then event = event .. ',"result":' .. f[5] end
if f[2] == 'failed' and f[6] then event = event .. ',"error":' .. f[6] end
event = event .. '}'
redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], seq .. '-0', 'e', event)
if f[2] == 'succeeded' or f[2] == 'failed' or f[2] == 'cancelled' then
  redis.call('EXPIRE', task, ARGV[4])
  redis.call('EXPIRE', events, ARGV[4])
end
return {seq, event, f[7] or '0'}
"""


# Leases use Redis's clock, so workers on hosts with skewed clocks agree.
_CLAIM_RUN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expiry and tonumber(expiry) > now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

_RENEW_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
"""

# Takes expired leases out of the set in one step, so exactly one reaper gets each.
_REAP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return ids
"""


class TaskGone(LookupError):
    """The task does not exist (never created, or expired)."""


class TaskFinished(RuntimeError):
    """The task already reached a terminal state; nothing more is written."""

    def __init__(self, state):
        super().__init__(f"task already {state}")
        self.state = state


def redis_client(settings, max_connections=None):
    """The Redis client both sides use. With ``max_connections`` the pool blocks
    (up to 10 s) instead of opening a connection per waiting greenlet."""
    options = dict(decode_responses=True, socket_timeout=5, socket_connect_timeout=3,
                   health_check_interval=30)
    if max_connections is None:
        return redis_lib.Redis.from_url(settings.redis_url, **options)
    pool = redis_lib.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max_connections, timeout=10, **options)
    return redis_lib.Redis(connection_pool=pool)


def new_task_id():
    return secrets.token_urlsafe(12)


def _progress_text(progress):
    # Stored as the JSON number the events carry.
    return repr(float(progress))


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
        self._append = redis.register_script(_APPEND)
        self._claim_run = redis.register_script(_CLAIM_RUN)
        self._renew_lease = redis.register_script(_RENEW_LEASE)
        self._reap = redis.register_script(_REAP)
        self.leases_key = f"{self.ns}:leases"

    def task_key(self, task_id):
        return f"{self.ns}:task:{task_id}"

    def events_key(self, task_id):
        return f"{self.ns}:task:{task_id}:events"

    def owner_key(self, owner):
        return f"{self.ns}:owner:{owner}"

    def create(self, *, kind, owner, params, now=None):
        """Store a new task with its first event (seq 1, ``queued``); return its snapshot."""
        now = time.time() if now is None else now
        task_id = new_task_id()
        stamp = protocol.iso_utc(now)
        fields = {
            "id": task_id, "kind": kind, "owner": owner, "params": json.dumps(params),
            "state": protocol.QUEUED, "progress": _progress_text(0), "message": "Queued",
            "seq": 1, "created_at": stamp, "updated_at": stamp, "attempts": 0, "cancel": 0,
        }
        event = {"task_id": task_id, "seq": 1, "state": protocol.QUEUED, "progress": 0.0,
                 "message": "Queued", "ts": round(now, 6)}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.task_key(task_id), mapping=fields)
        pipe.xadd(self.events_key(task_id), {"e": json.dumps(event)}, id="1-0",
                  maxlen=self.maxlen, approximate=True)
        pipe.zadd(self.owner_key(owner), {task_id: now})
        pipe.expire(self.owner_key(owner), self.retention_s * 2)
        pipe.execute()
        return self.snapshot_of(fields)

    def delete(self, task_id, owner):
        """Remove a task that could not be enqueued, so no half-created task remains."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.task_key(task_id), self.events_key(task_id))
        pipe.zrem(self.owner_key(owner), task_id)
        pipe.execute()

    def append(self, task_id, ts=None, **patch):
        """Apply ``patch`` (state, progress, message, result, error, worker...) and log
        the event atomically.

        :returns: ``(event_json, cancel_requested)``.
        :raises TaskGone: the task does not exist.
        :raises TaskFinished: the task is already terminal; nothing was written.
        """
        ts = time.time() if ts is None else ts
        args = [f"{ts:.6f}", protocol.iso_utc(ts), self.maxlen, self.retention_s]
        for field, value in patch.items():
            if field == "progress":
                value = _progress_text(value)
            elif field in ("result", "error"):
                value = json.dumps(value)
            args += [field, value]
        reply = self._append(keys=[self.task_key(task_id), self.events_key(task_id)], args=args)
        code = int(reply[0])
        if code == -1:
            raise TaskGone(task_id)
        if code == 0:
            raise TaskFinished(reply[1])
        return reply[1], reply[2] == "1"

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
        entries = self.redis.xrange(self.events_key(task_id), min=f"{after + 1}-0", max="+",
                                    count=limit + 1)
        page = entries[:limit]
        next_after = int(page[-1][0].split("-")[0]) if page else after
        return [fields["e"] for _, fields in page], next_after, len(entries) > limit

    def request_cancel(self, task_id):
        self.redis.hset(self.task_key(task_id), "cancel", 1)

    def count_attempt(self, task_id):
        """Count one more start of the task; returns how many starts there were."""
        return int(self.redis.hincrby(self.task_key(task_id), "attempts", 1))

    def claim_run(self, task_id, lease_s):
        """Take the run lease of a task; False if a live run already holds it."""
        return bool(self._claim_run(keys=[self.leases_key], args=[task_id, lease_s]))

    def renew_lease(self, task_id, lease_s):
        self._renew_lease(keys=[self.leases_key], args=[task_id, lease_s])

    def release_lease(self, task_id):
        self.redis.zrem(self.leases_key, task_id)

    def reap_expired_leases(self, limit=100):
        """Ids of runs whose worker stopped renewing; each is returned to one caller only."""
        return self._reap(keys=[self.leases_key], args=[limit])

    @staticmethod
    def snapshot_of(rec):
        """The contract's snapshot from a stored hash; absent fields are omitted."""
        snap = {
            "id": rec["id"], "kind": rec["kind"], "state": rec["state"],
            "progress": float(rec["progress"]), "message": rec["message"],
            "seq": int(rec["seq"]), "created_at": rec["created_at"],
            "updated_at": rec["updated_at"],
        }
        if rec["state"] == protocol.SUCCEEDED and rec.get("result"):
            snap["result"] = json.loads(rec["result"])
        if rec["state"] == protocol.FAILED and rec.get("error"):
            snap["error"] = json.loads(rec["error"])
        if rec.get("worker"):
            snap["worker"] = rec["worker"]
        return snap

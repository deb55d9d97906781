"""The store's Lua scripts, as rq keeps its own (``rq/scripts.py``).

Each runs atomically in Redis. Their KEYS are named in :mod:`.keys`; the
scripts also name the owner's and the tasks' keys from their contents (prefixes
passed in ARGV), which a single Redis (or a replicated one) allows; Redis Cluster
does not. The bytes matter: the fast listener relies on the exact text
:data:`APPEND` publishes (tests/unit/test_store_scripts.py pins every script).
"""

from ..protocol import MQ_JSON_SEPARATORS

# The separators of python-socketio's message (protocol.MQ_JSON_SEPARATORS): the
# in-script publish renders the event with them, as the stock emitter would.
_COMMA, _COLON = MQ_JSON_SEPARATORS

TERMINAL = """
local function terminal(state)
  return state == 'succeeded' or state == 'failed' or state == 'cancelled'
end
"""

# Stores a task and its first event unless the owner already has ``max_active``
# unfinished tasks (0) or its client address ``ARGV[9]`` (-1; taskbeam.quotas); ids of
# tasks that finished or expired unfinished are forgotten on the way.
CREATE = (
    TERMINAL
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
PY_JSON = r"""
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
APPEND = (
    TERMINAL
    + PY_JSON
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
  redis.call('PUBLISH', channel, ARGV[10] .. event_of(py_str, '"""
    + _COLON
    + "', '"
    + _COMMA
    + """') .. ARGV[11])
end
return {seq, event, f[7] or '0'}
"""
)

# The same choice of channel for a message published after its append (a writer
# that waits for replicas first): the room channel ARGV[2] unless KEYS[1] exists.
PUBLISH = """
local channel = ARGV[1]
if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[1]) == 0 then channel = ARGV[2] end
return redis.call('PUBLISH', channel, ARGV[3])
"""

# Removes a finished task of its owner and every key naming it, in one step:
# -1 no such task (or not the owner's), 0 not finished yet, 1 removed.
REMOVE_FINISHED = (
    TERMINAL
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
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""

# -1: no such task; -2: already finished; 0: a live run holds the lease;
# otherwise the new run's token.
CLAIM_RUN = (
    TERMINAL
    + NOW
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
RENEW_LEASE = (
    NOW
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
RELEASE_LEASE = """
if redis.call('HGET', KEYS[2], 'fence') == ARGV[2] then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# Takes expired leases out of the set in one step, so exactly one reaper gets each.
REAP = (
    NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return ids
"""
)

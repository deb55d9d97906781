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

# Leases use Redis's clock, so workers on hosts with skewed clocks agree.
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
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

# What APPEND and FLUSH_ROLLUPS share: their arguments, and writing an event.
# KEYS: task, its events, leases, active, queued, main_only; ARGV: 1 ts, 2 ISO time,
# 3 stream maxlen, 4 retention, 5 emit id, 6 run token, 7 owner key prefix,
# 8 channel, 9 room channel, 10 message head, 11 message tail, 12 a tail's part
# before the room, 13 after it, 14 task key prefix, 15 pending roll-ups key;
# from 16: the patch.
EVENTS = (
    TERMINAL
    + PY_JSON
    + """
local task, leases, active, queued = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local channel, task_prefix, pending = ARGV[8], ARGV[14], ARGV[15]

-- The event's JSON with the given string encoder and separators; a running event
-- of a staged task names its stage.
local function event_of(f, seq, counts, str, colon, comma)
  local e = '{"task_id"' .. colon .. str(f[1]) .. comma .. '"seq"' .. colon .. seq
    .. comma .. '"state"' .. colon .. str(f[2]) .. comma .. '"progress"' .. colon .. f[3]
    .. comma .. '"message"' .. colon .. str(f[4]) .. comma .. '"ts"' .. colon .. ARGV[1]
  if f[2] == 'running' and f[8] then e = e .. comma .. '"stage"' .. colon .. str(f[8]) end
  for i = 1, #counts, 2 do e = e .. comma .. '"' .. counts[i] .. '"' .. colon .. counts[i + 1] end
  if f[2] == 'succeeded' and f[5] then e = e .. comma .. '"result"' .. colon .. f[5] end
  if f[2] == 'failed' and f[6] then e = e .. comma .. '"error"' .. colon .. f[6] end
  return e .. '}'
end

-- Logs the event of the task at key t (already patched; was: its state before) and
-- publishes it to its room; returns the event's JSON, the cancel flag and the seq.
local function write_event(t, was, counts)
  local seq = redis.call('HINCRBY', t, 'seq', 1)
  redis.call('HSET', t, 'updated_at', ARGV[2])
  local f = redis.call('HMGET', t, 'id', 'state', 'progress', 'message', 'result', 'error',
                       'cancel', 'stage')
  if f[2] ~= was then  -- a state change; progress events skip all of this
    if was == 'queued' then redis.call('ZREM', queued, f[1]) end
    if f[2] == 'running' then redis.call('HSETNX', t, 'started_at', ARGV[2]) end
    if terminal(f[2]) then redis.call('HSET', t, 'finished_at', ARGV[2]) end
  end
  local event = event_of(f, seq, counts, cjson.encode, ':', ',')
  redis.call('XADD', t .. ':events', 'MAXLEN', '~', ARGV[3], seq .. '-0', 'e', event)
  if terminal(f[2]) then
    -- A task of an anonymous owner keeps its own, shorter retention (quotas.py).
    local keep = redis.call('HGET', t, 'retention') or ARGV[4]
    for _, key in ipairs({t, t .. ':events', t .. ':kids', t .. ':counted'}) do
      redis.call('EXPIRE', key, keep)
    end
    redis.call('ZREM', active, f[1])
    redis.call('ZREM', queued, f[1])
    local owner = redis.call('HGET', t, 'owner')
    if owner then redis.call('SREM', ARGV[7] .. owner .. ':active', f[1]) end
  end
  if channel ~= '' then
    local to, room, tail = channel, ARGV[9], ARGV[11]
    if t ~= task then
      room = channel .. '#task:' .. f[1]
      tail = ARGV[12] .. '"task:' .. f[1] .. '"' .. ARGV[13]
    end
    if room ~= '' and redis.call('EXISTS', KEYS[6]) == 0 then to = room end
    redis.call('PUBLISH', to, ARGV[10] .. event_of(f, seq, counts, py_str, '"""
    + _COLON
    + "', '"
    + _COMMA
    + """') .. tail)
  end
  return event, f[7] or '0', seq
end

-- Ends a workflow's queued children as cancelled (they never start) and asks its
-- running ones to stop (at their next report); how many were unfinished.
local function cancel_kids(parent)
  local n = 0
  for _, kid in ipairs(redis.call('ZRANGE', parent .. ':kids', 0, -1)) do
    local k = task_prefix .. kid
    local s = redis.call('HGET', k, 'state')
    if s and not terminal(s) then
      n = n + 1
      redis.call('HSET', k, 'cancel', 1)
      if s == 'queued' then
        redis.call('HSET', k, 'state', 'cancelled', 'message', 'Cancelled')
        write_event(k, s, {})
      end
    end
  end
  return n
end

-- A workflow's event from its children's roll-up: progress never goes back.
local function roll_up(parent, fields)
  local p = redis.call('HMGET', parent, 'state', 'rollup_total', 'rollup_span', 'kids_total',
                       'kids_done', 'progress', 'rollup')
  local whole = tonumber(p[3]) * tonumber(p[7]) / (tonumber(p[2]) * 100)
  whole = math.max(tonumber(p[6]), math.floor(math.min(whole, 100) * 10) / 10)
  redis.call('HSET', parent, 'progress', string.format('%.1f', whole),
             'message', p[5] .. ' of ' .. p[4] .. ' children finished')
  if #fields > 0 then redis.call('HSET', parent, unpack(fields)) end
  local clock = redis.call('TIME')
  redis.call('HSET', parent, 'rollup_at', tonumber(clock[1]) + tonumber(clock[2]) / 1e6)
  redis.call('ZREM', pending, string.sub(parent, #task_prefix + 1))
  return write_event(parent, p[1], {'done', p[5], 'total', p[4]})
end
"""
)

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
#
# A workflow's child (its hash names a ``parent``) also rolls up into the parent,
# in the same step: the child's progress counts once, at its highest (a retry
# starting over or a fenced-off run adds nothing), weighted; its end counts once
# (its terminal write happens once). The parent gets an event when it changes
# state, else at most every 100 ms (Redis's clock): a change held back waits in
# the pending set for a worker's FLUSH_ROLLUPS. A failed child fails the parent and
# asks the others to cancel, unless failures are allowed; the last child to end
# finishes the parent, or marks it for its fan-in, which the caller then sends.
# A child's reply adds: the parent's id, the parent's new event or '' (for a caller
# that publishes after the append), and the parent's id again when its fan-in is due.
APPEND = (
    EVENTS
    + """
local emit_id, token = ARGV[5], ARGV[6]
local cur = redis.call('HMGET', task, 'state', 'id', 'fence', 'last_emit', 'owner', 'parent',
                       'weight', 'index')
if not cur[1] then return {-1, ''} end
if emit_id ~= '' and cur[4] == emit_id then
  -- Rewritten (same value) so that a WAIT on this connection covers the first try.
  redis.call('HSET', task, 'last_emit', emit_id)
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  return {tonumber(redis.call('HGET', task, 'seq')), last[2][2],
          redis.call('HGET', task, 'cancel') or '0'}
end
if terminal(cur[1]) then return {0, cur[1]} end
if token ~= '' and (cur[3] ~= token or not redis.call('ZSCORE', leases, cur[2])) then
  return {-2, 'fenced'}
end
-- done/total (a progress report's counts) go into this event only, not the snapshot.
local counts = {}
for i = 16, #ARGV, 2 do
  if ARGV[i] == 'done' or ARGV[i] == 'total' then
    counts[#counts + 1] = ARGV[i]
    counts[#counts + 1] = ARGV[i + 1]
  else
    redis.call('HSET', task, ARGV[i], ARGV[i + 1])
  end
end
if emit_id ~= '' then redis.call('HSET', task, 'last_emit', emit_id) end
local event, cancel, seq = write_event(task, cur[1], counts)
if not cur[6] then return {seq, event, cancel} end

-- A workflow's child: the roll-up into its parent.
local reply = {seq, event, cancel, cur[6], '', ''}
local parent = task_prefix .. cur[6]
local p = redis.call('HMGET', parent, 'state', 'kids_total', 'allow_failures', 'fan_in',
                     'rollup_at')
if not p[1] or terminal(p[1]) then return reply end
local state = redis.call('HGET', task, 'state')
local ended = terminal(state)
local pct = ended and 100 or tonumber(redis.call('HGET', task, 'progress'))
local counted = tonumber(redis.call('HGET', parent .. ':counted', cur[2]) or '0')
local moved = pct > counted
if moved then
  redis.call('HSET', parent .. ':counted', cur[2], pct)
  redis.call('HINCRBYFLOAT', parent, 'rollup', (pct - counted) * tonumber(cur[7]))
end
if not (moved or ended) then return reply end
local fields = {}
if ended then
  local done = redis.call('HINCRBY', parent, 'kids_done', 1)
  if state ~= 'succeeded' then redis.call('HINCRBY', parent, 'kids_failed', 1) end
  local failed = tonumber(redis.call('HGET', parent, 'kids_failed'))
  if state ~= 'succeeded' and p[3] ~= '1' then
    local why = redis.call('HGET', task, 'message') or state
    fields = {'state', 'failed', 'message', 'Child ' .. cur[8] .. ' ' .. state,
              'error', cjson.encode({code = 'child_failed',
                                     message = 'Child ' .. cur[8] .. ' ' .. state .. ': ' .. why})}
    cancel_kids(parent)
  elseif done == tonumber(p[2]) and p[4] == '1' then
    fields = {'phase', 'fanin', 'message', 'All ' .. p[2] .. ' children finished'}
    reply[6] = cur[6]
  elseif done == tonumber(p[2]) then
    fields = {'state', 'succeeded', 'progress', '100.0',
              'message', 'Done: ' .. p[2] .. ' children' .. (failed > 0 and (', ' .. failed
                .. ' failed') or ''),
              'result', '{"children":' .. p[2] .. ',"failed":' .. failed .. '}'}
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
if #fields == 0 and now - tonumber(p[5] or '0') < 0.1 then
  redis.call('ZADD', pending, 'NX', now, cur[6])
  return reply
end
reply[5] = roll_up(parent, fields)
return reply
"""
)

# Writes the held-back roll-up events of workflows whose last event is 100 ms old
# (at most ARGV[16] of them); returns their events, for a caller that publishes them.
# KEYS[1] and KEYS[2] are the pending set (no task of its own).
FLUSH_ROLLUPS = (
    EVENTS
    + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local written = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', now - 0.1, 'LIMIT', 0,
                                tonumber(ARGV[16]))) do
  redis.call('ZREM', pending, id)
  local state = redis.call('HGET', task_prefix .. id, 'state')
  if state and not terminal(state) then
    written[#written + 1] = id
    written[#written + 1] = roll_up(task_prefix .. id, {})
  end
end
return written
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
-- A workflow's children go with it (one that still winds down ends at its next write).
for _, kid in ipairs(redis.call('ZRANGE', task .. ':kids', 0, -1)) do
  redis.call('DEL', ARGV[3] .. kid, ARGV[3] .. kid .. ':events')
  for _, key in ipairs({active, queued, leases}) do redis.call('ZREM', key, kid) end
end
redis.call('DEL', task .. ':kids', task .. ':counted')
return 1
"""
)

# Stores a workflow's children (queued, each with its first event) under the
# parent ``KEYS[1]``, and the parent's roll-up fields. ARGV: 1 parent id, 2 now,
# 3 ttl, 4 stream maxlen, 5 task key prefix, 6 the children's weights' sum, 7 the
# children's share of the bar (%), 8 allow_failures, 9 fan_in, 10 the first stage;
# then per child: id, weight, kind, params JSON, first event JSON.
# 0 if the parent is gone.
CREATE_CHILDREN = """
local parent, kids, active, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pid, now, ttl, maxlen, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local p = redis.call('HMGET', parent, 'owner', 'retention', 'created_at')
if not p[1] then return 0 end
redis.call('HSET', parent, 'rollup_total', ARGV[6], 'rollup_span', ARGV[7],
           'allow_failures', ARGV[8], 'fan_in', ARGV[9], 'stage', ARGV[10], 'rollup', 0,
           'kids_total', (#ARGV - 10) / 5, 'kids_done', 0, 'kids_failed', 0)
local index = 0
for i = 11, #ARGV, 5 do
  local id = ARGV[i]
  local t = prefix .. id
  redis.call('HSET', t, 'id', id, 'kind', ARGV[i + 2], 'owner', p[1], 'params', ARGV[i + 3],
             'state', 'queued', 'progress', '0.0', 'message', 'Queued', 'seq', 1,
             'created_at', p[3], 'updated_at', p[3], 'attempts', 0, 'cancel', 0, 'fence', 0,
             'parent', pid, 'weight', ARGV[i + 1], 'index', index)
  if p[2] then redis.call('HSET', t, 'retention', p[2]) end
  redis.call('XADD', t .. ':events', 'MAXLEN', '~', maxlen, '1-0', 'e', ARGV[i + 4])
  redis.call('EXPIRE', t, ttl)
  redis.call('EXPIRE', t .. ':events', ttl)
  redis.call('ZADD', kids, index, id)
  redis.call('ZADD', active, now, id)
  redis.call('ZADD', queued, now, id)
  index = index + 1
end
redis.call('EXPIRE', kids, ttl)
return 1
"""

# Cancels a workflow's children (``KEYS[1]``, the parent's key; the arguments as
# APPEND's): the queued ones end now, the running ones at their next report.
CANCEL_CHILDREN = (
    EVENTS
    + """
return cancel_kids(task)
"""
)


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

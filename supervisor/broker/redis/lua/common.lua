-- Shared by every task script (prepended by scripts.py). Every key is in KEYS, in this order
-- (see keys.py TASK_KEYS); ARGV[1..6] is the header below, a script's own arguments follow.
local K_TASK, K_PARAMS, K_RESULT, K_QUEUES, K_DELAYED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_UNIQ, K_COUNTS, K_NSTATUS, K_DONE, K_EXPIRE = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local K_LEASE, K_OWNER, K_HELD, K_SEQ, K_PARKED = KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local K_EVENTS, K_CANCEL, K_DISPATCH, K_KVIDX = KEYS[16], KEYS[17], KEYS[18], KEYS[19]
local K_ROUTES = KEYS[20]
local K_OBS = KEYS[21] -- this node's observations for its metrics (bounded list)

-- Keys named from the hash tag of every other key (K_TASK is '{prefix}:task'): a named
-- queue's ready set, the parked consumers of a queue ('*': of every queue; a queue name has
-- no '*'), and a consumer's mailbox.
local TAG = string.sub(K_TASK, 1, -6)
local DEFAULT_QUEUE = 'default'
local ALL = '*'
local function ready_key(q) return TAG .. ':ready:' .. q end
local function parkq_key(q) return TAG .. ':parkq:' .. q end
local function box_key(qc) return TAG .. ':box:' .. qc end

-- Times in records are strings of epoch seconds made by the caller's clock (cjson keeps only
-- 14 digits of a number); zset scores are milliseconds.
local NOW = ARGV[1]
local NOW_N = tonumber(ARGV[1])
local NOW_MS = NOW_N * 1000
local NODE = ARGV[2]
local CAP = tonumber(ARGV[3])
local OK_TTL_MS = tonumber(ARGV[4])
local FAIL_TTL_MS = tonumber(ARGV[5])
local LEASE_MS = tonumber(ARGV[6])
local A0 = 6 -- a script's own arguments start at ARGV[A0 + 1]

local NULL = cjson.null
local BAND = 1099511627776 -- 2^40: ready score = (10 - priority) * BAND + seq
local SEP = '\31'
local BOX_TTL_MS = 86400000 -- an unread mailbox (its consumer died) goes away
local PROMOTE_BATCH = 100

local function isnull(v) return v == nil or v == NULL end

local FINAL = {succeeded = true, dead = true, cancelled = true}

local function active(status)
  return status == 'queued' or status == 'running' or status == 'scheduled'
    or status == 'retrying'
end

local function redis_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function load(id)
  local s = redis.call('HGET', K_TASK, id)
  if not s then return nil end
  return cjson.decode(s)
end

local function save(rec)
  local blob = cjson.encode(rec)
  redis.call('HSET', K_TASK, rec.task_id, blob)
  return blob
end

local function counter(ev, ttype, st)
  redis.call('HINCRBY', K_COUNTS, ev .. SEP .. ttype .. SEP .. st, 1)
end

local OBS_MAX = 10000
local function observe(ev, ttype, st, seconds)
  local n = redis.call('RPUSH', K_OBS, ev .. SEP .. ttype .. SEP .. st .. SEP .. seconds)
  if n == 1 then redis.call('PEXPIRE', K_OBS, 86400000) end -- a dead node's list goes away
  if n > OBS_MAX then redis.call('LTRIM', K_OBS, -OBS_MAX, -1) end
end

local function event(rec)
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', 100000, '*', 'id', rec.task_id,
    'status', rec.status, 'attempt', rec.attempts, 'at', NOW)
end

-- Every status change of a stored record goes through here (the by-status counts).
local function set_status(rec, status)
  if not isnull(rec.status) then redis.call('HINCRBY', K_NSTATUS, rec.status, -1) end
  rec.status = status
  redis.call('HINCRBY', K_NSTATUS, status, 1)
end

local function queue_of(rec)
  if isnull(rec.queue) then return DEFAULT_QUEUE end
  return rec.queue
end

local function ready_score(rec)
  return string.format('%.0f', (10 - rec.priority) * BAND + rec.seq)
end

-- Tasks made ready by this call, by queue: flush_wakes() hands them to parked consumers
-- before the script returns.
local PENDING_WAKES = {}
local KNOWN_QUEUES = {} -- queues this call added to K_QUEUES already

local function made_ready(rec)
  local q = queue_of(rec)
  redis.call('ZADD', ready_key(q), ready_score(rec), rec.task_id)
  PENDING_WAKES[q] = (PENDING_WAKES[q] or 0) + 1
end

-- Track rec as active: delayed (as delayed_status) until its eta, else ready (in its queue:
-- the message's, else its type's route, else 'default'). keep_seq puts it back at its old
-- place (a shutdown requeue). Returns 1 when it became ready. Saves rec.
local function enqueue(rec, delayed_status, keep_seq)
  if isnull(rec.queue) then
    rec.queue = redis.call('HGET', K_ROUTES, rec.type) or DEFAULT_QUEUE
  end
  if not KNOWN_QUEUES[rec.queue] then
    redis.call('SADD', K_QUEUES, rec.queue)
    KNOWN_QUEUES[rec.queue] = true
  end
  if not keep_seq or isnull(rec.seq) then rec.seq = redis.call('INCR', K_SEQ) end
  if not isnull(rec.unique_key) then redis.call('HSET', K_UNIQ, rec.unique_key, rec.task_id) end
  if FINAL[rec.status] then -- a finished task queued again (retry): no longer retained
    redis.call('ZREM', K_DONE, rec.task_id)
    redis.call('ZREM', K_EXPIRE, rec.task_id)
  end
  local ready = 0
  local eta = nil
  if not isnull(rec.eta) then eta = tonumber(rec.eta) end
  if eta and eta > NOW_N then
    set_status(rec, delayed_status)
    redis.call('ZADD', K_DELAYED, eta * 1000, rec.task_id)
  else
    set_status(rec, 'queued')
    rec.ready_at = NOW
    made_ready(rec)
    ready = 1
  end
  save(rec)
  event(rec)
  return ready
end

-- Forget a finished record (cap, retention, purge).
local function forget(id)
  local rec = load(id)
  if rec then redis.call('HINCRBY', K_NSTATUS, rec.status, -1) end
  redis.call('HDEL', K_TASK, id)
  redis.call('HDEL', K_PARAMS, id)
  redis.call('HDEL', K_RESULT, id)
  redis.call('ZREM', K_DONE, id)
  redis.call('ZREM', K_EXPIRE, id)
end

local function release_lease(id)
  redis.call('ZREM', K_LEASE, id)
  redis.call('HDEL', K_OWNER, id)
end

local function finish(rec, status)
  local id = rec.task_id
  if not isnull(rec.unique_key) and redis.call('HGET', K_UNIQ, rec.unique_key) == id then
    redis.call('HDEL', K_UNIQ, rec.unique_key)
  end
  if rec.status ~= 'running' then -- a running task is in neither (take popped it)
    redis.call('ZREM', ready_key(queue_of(rec)), id)
    redis.call('ZREM', K_DELAYED, id)
  end
  release_lease(id)
  if not isnull(rec.cancel_requested_at) then redis.call('HDEL', K_CANCEL, id) end
  if rec.status == 'running' and not isnull(rec.started_at) then -- run time of attempts that ran
    observe('finished', rec.type, status, string.format('%.6f', NOW_N - tonumber(rec.started_at)))
  end
  set_status(rec, status)
  rec.finished_at = NOW
  rec.consumer = NULL
  rec.node = NULL
  rec.lease_until = NULL
  save(rec)
  event(rec)
  counter('finished', rec.type, status)
  redis.call('ZADD', K_DONE, NOW_MS, id)
  local ttl = (status == 'succeeded') and OK_TTL_MS or FAIL_TTL_MS
  redis.call('ZADD', K_EXPIRE, NOW_MS + ttl, id)
  while redis.call('ZCARD', K_DONE) > CAP do
    local oldest = redis.call('ZRANGE', K_DONE, 0, 0)
    forget(oldest[1])
  end
end

-- A failed attempt. fate ('retry' or 'dead') and eta (seconds string) were decided by the
-- caller under the retry policy; a cancel request or a shutdown overrides them.
local function fail(rec, reason, err, tb, exit_status, fate, eta)
  local errors = rec.errors
  if isnull(errors) or type(errors) ~= 'table' then errors = {} end
  local entry = {attempt = rec.attempts, reason = reason, at = NOW, error = err,
    traceback = tb, exit_status = NULL}
  if exit_status ~= '' then entry.exit_status = tonumber(exit_status) end
  release_lease(rec.task_id)
  rec.consumer = NULL
  rec.node = NULL
  rec.lease_until = NULL
  if not isnull(rec.cancel_requested_at) or reason == 'cancelled' then
    errors[#errors + 1] = entry
    rec.errors = errors
    finish(rec, 'cancelled')
    return 'cancelled'
  end
  if reason == 'shutdown' then -- not the task's fault: back at its place, attempt not counted
    rec.attempts = math.max(0, rec.attempts - 1)
    rec.errors = errors
    enqueue(rec, 'scheduled', true)
    return 'queued'
  end
  errors[#errors + 1] = entry
  rec.errors = errors
  counter('failed', rec.type, reason)
  if fate == 'dead' then
    finish(rec, 'dead')
    return 'dead'
  end
  if eta == '' then rec.eta = NULL else rec.eta = eta end
  counter('retried', rec.type, reason)
  enqueue(rec, 'retrying', false)
  return rec.status
end

-- Move due delayed tasks to the ready set (a bounded batch); returns how many.
local function promote(limit)
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', NOW_MS, 'LIMIT', 0, limit)
  local n = 0
  for _, id in ipairs(due) do
    redis.call('ZREM', K_DELAYED, id)
    local rec = load(id)
    if rec and (rec.status == 'scheduled' or rec.status == 'retrying') then
      rec.eta = NULL
      rec.seq = redis.call('INCR', K_SEQ)
      set_status(rec, 'queued')
      rec.ready_at = NOW
      made_ready(rec)
      save(rec)
      event(rec)
      n = n + 1
    end
  end
  return n
end

-- The token that fences a held task: qualified consumer and attempt.
local function token(qc, attempt) return qc .. '|' .. tostring(attempt) end

-- The names in a consumer's queues argument (joined by SEP; '' is every queue: none listed).
local function split_queues(queues)
  local out = {}
  for q in string.gmatch(queues, '[^' .. SEP .. ']+') do out[#out + 1] = q end
  return out
end

-- The ready sets a consumer takes from: its queues, or every queue ('').
local function sets_of(queues)
  local names = queues == '' and redis.call('SMEMBERS', K_QUEUES) or split_queues(queues)
  local sets = {}
  for i, q in ipairs(names) do sets[i] = ready_key(q) end
  return sets
end

-- Pop the next task across sets: the lowest score (highest priority, then first pushed).
local function pop_best(sets)
  if #sets == 1 then
    local top = redis.call('ZPOPMIN', sets[1])
    return top[1]
  end
  local best_key, best_id, best_score = nil, nil, nil
  for _, key in ipairs(sets) do
    local top = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #top > 0 then
      local score = tonumber(top[2])
      if best_score == nil or score < best_score then
        best_key, best_id, best_score = key, top[1], score
      end
    end
  end
  if best_key then redis.call('ZREM', best_key, best_id) end
  return best_id
end

-- Hand the best ready task of sets to consumer qc (attempt counted, lease and fencing token
-- set). Returns its id, record json and params, or nil when nothing is ready there.
local function take(qc, consumer, sets, lease_ms, lease_by_type)
  while true do
    local tid = pop_best(sets)
    if not tid then return nil end
    local rec = load(tid)
    if rec and rec.status == 'queued' then
      set_status(rec, 'running')
      rec.attempts = rec.attempts + 1
      rec.started_at = NOW
      rec.consumer = consumer
      rec.node = string.match(qc, '^[^/]*')
      local ms = lease_ms
      if lease_by_type and lease_by_type[rec.type] then ms = tonumber(lease_by_type[rec.type]) end
      local deadline = redis_ms() + ms
      rec.lease_until = string.format('%.3f', deadline / 1000)
      redis.call('ZADD', K_LEASE, deadline, tid)
      redis.call('HSET', K_OWNER, tid, token(qc, rec.attempts))
      redis.call('HSET', K_HELD, qc, tid)
      counter('started', rec.type, '')
      local wait_s = 0
      if not isnull(rec.ready_at) then wait_s = math.max(0, NOW_N - tonumber(rec.ready_at)) end
      observe('started', rec.type, '', string.format('%.6f', wait_s))
      local blob = save(rec)
      event(rec)
      return tid, blob, redis.call('HGET', K_PARAMS, tid) or ''
    end
  end
end

-- Parked consumers: a consumer that found nothing and waits on its mailbox (BLPOP) is parked
-- until a deadline (Redis TIME ms, a little past its wait): K_PARKED holds what a take for it
-- needs, and parkq:<queue> (or parkq:* for a consumer of every queue) its deadline. A task
-- made ready goes straight to the mailbox of a parked consumer of its queue, taken for it
-- here: no wake-up and second take, and the same task its own take would have got now.
local function park_queues(info)
  if info.q == '' then return {ALL} end
  return split_queues(info.q)
end

local function unpark(qc, blob)
  local info = cjson.decode(blob)
  for _, q in ipairs(park_queues(info)) do redis.call('ZREM', parkq_key(q), qc) end
  redis.call('HDEL', K_PARKED, qc)
end

-- qc no longer waits (it called, or it is gone): unpark it if it is parked; true if it was.
local function leave(qc)
  local blob = redis.call('HGET', K_PARKED, qc)
  if not blob then return false end
  unpark(qc, blob)
  return true
end

-- Append item to qc's mailbox ('' wakes it; else a delivery, see below).
local function send(qc, item)
  local box = box_key(qc)
  redis.call('LPUSH', box, item)
  redis.call('PEXPIRE', box, BOX_TTL_MS)
end

local function park(qc, consumer, queues, lease_ms, lease_by_type, until_ms)
  local info = {c = consumer, q = queues, l = lease_ms, t = lease_by_type}
  redis.call('HSET', K_PARKED, qc, cjson.encode(info))
  for _, q in ipairs(park_queues(info)) do redis.call('ZADD', parkq_key(q), until_ms, qc) end
  redis.call('DEL', box_key(qc)) -- stale wake-ups (a consumer parks holding nothing)
end

-- The parked consumer of queue q (or of every queue) with the earliest deadline still ahead;
-- those past it (dead, frozen, or gone without a word) are dropped on the way.
local function parked_for(q, now_ms)
  local best_qc, best_until = nil, nil
  for _, key in ipairs({parkq_key(q), parkq_key(ALL)}) do
    while true do
      local top = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if #top == 0 then break end
      local until_ms = tonumber(top[2])
      if until_ms > now_ms then
        if best_until == nil or until_ms < best_until then best_qc, best_until = top[1], until_ms end
        break
      end
      if not leave(top[1]) then redis.call('ZREM', key, top[1]) end
    end
  end
  return best_qc
end

-- What a mailbox receives: '' (wake up, take again) or a task taken for its consumer:
-- "<length of the record json>\31<record json><params>".
local function delivery(blob, params)
  return tostring(#blob) .. SEP .. blob .. params
end

-- A task taken for qc while it was parked and never received (its mailbox still holds the
-- delivery: its wait ended first, or it died parked) is dropped from the mailbox: true then.
local function undelivered(qc)
  return redis.call('DEL', box_key(qc)) == 1
end

-- Hand the tasks this call made ready to parked consumers of their queues, while both last.
local function flush_wakes()
  local now_ms = nil
  for q, n in pairs(PENDING_WAKES) do
    for _ = 1, n do
      now_ms = now_ms or redis_ms()
      local qc = parked_for(q, now_ms)
      if not qc then break end
      local blob = redis.call('HGET', K_PARKED, qc)
      local info = cjson.decode(blob)
      local lbt = nil
      if info.t ~= '' then lbt = cjson.decode(info.t) end
      local tid, rec_blob, params = take(qc, info.c, sets_of(info.q), tonumber(info.l), lbt)
      if not tid then break end -- nothing ready in q (nor in the consumer's other queues)
      unpark(qc, blob)
      send(qc, delivery(rec_blob, params))
    end
  end
  PENDING_WAKES = {}
end

-- The running record qc holds as task id (attempt: '' for the current one), or nil when the
-- lease was lost; a stale hold of qc is dropped then.
local function fenced(qc, id, attempt)
  if redis.call('HGET', K_HELD, qc) ~= id then return nil end
  local rec = load(id)
  local want = attempt
  if rec and want == '' then want = tostring(rec.attempts) end
  if not rec or rec.status ~= 'running'
      or redis.call('HGET', K_OWNER, id) ~= token(qc, want) then
    redis.call('HDEL', K_HELD, qc)
    return nil
  end
  return rec
end

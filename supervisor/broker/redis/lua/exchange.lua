-- exchange(qc, consumer, want, lease_ms, outcome, id, attempt, result, reason, error, traceback,
--          exit_status, fate, eta, lease ms by task type as JSON or '', queues): report the held task
-- (outcome '' for none), then take the next task when want is '1'. Returns {lost, kind, ...}:
-- lost is 1 when the report was refused (fencing: the consumer no longer holds that attempt;
-- nothing changed); kind is
-- 'task' (id, record json, params), 'none' (next delayed eta ms or ''), 'held' (id) or 'off'.
local qc, consumer, want = ARGV[A0 + 1], ARGV[A0 + 2], ARGV[A0 + 3]
local lease_ms = tonumber(ARGV[A0 + 4])
local outcome, id = ARGV[A0 + 5], ARGV[A0 + 6]
local lease_by_type = nil
if ARGV[A0 + 15] ~= '' then lease_by_type = cjson.decode(ARGV[A0 + 15]) end
local lost = 0
if outcome ~= '' then
  local rec = fenced(qc, id, ARGV[A0 + 7])
  if not rec then
    lost = 1
  else
    redis.call('HDEL', K_HELD, qc)
    if outcome == 'succeeded' then
      redis.call('HSET', K_RESULT, id, ARGV[A0 + 8])
      finish(rec, 'succeeded')
    else
      fail(rec, ARGV[A0 + 9], ARGV[A0 + 10], ARGV[A0 + 11], ARGV[A0 + 12], ARGV[A0 + 13],
        ARGV[A0 + 14])
    end
  end
  flush_wakes()
end
if want ~= '1' then return {lost, 'none', ''} end
if redis.call('HGET', K_DISPATCH, NODE) == '0' then return {lost, 'off'} end
local held = redis.call('HGET', K_HELD, qc)
if held then
  local h = load(held)
  local owner = redis.call('HGET', K_OWNER, held)
  if h and h.status == 'running' and owner == token(qc, h.attempts) then
    return {lost, 'held', held}
  end
  redis.call('HDEL', K_HELD, qc) -- a stale hold: its lease was recovered
end
promote(PROMOTE_BATCH)
-- The ready sets to take from: the consumer's queues (names joined by SEP), or every queue.
local sets = {}
if ARGV[A0 + 16] == '' then
  for _, q in ipairs(redis.call('SMEMBERS', K_QUEUES)) do sets[#sets + 1] = ready_key(q) end
else
  for q in string.gmatch(ARGV[A0 + 16], '[^' .. SEP .. ']+') do sets[#sets + 1] = ready_key(q) end
end
-- The next task across them: the lowest score (highest priority, then first pushed).
local function pop_best()
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
while true do
  local tid = pop_best()
  if not tid then break end
  local rec = load(tid)
  if rec and rec.status == 'queued' then
    set_status(rec, 'running')
    rec.attempts = rec.attempts + 1
    rec.started_at = NOW
    rec.consumer = consumer
    rec.node = NODE
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
    return {lost, 'task', tid, blob, redis.call('HGET', K_PARAMS, tid) or ''}
  end
end
local nxt = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
return {lost, 'none', nxt[2] or ''}

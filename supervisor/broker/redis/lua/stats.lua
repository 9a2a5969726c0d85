-- stats(): promote due tasks, then read the counts (O(queues x priorities + counters), no
-- record walk). Returns {per priority 0..10: count, ready_at of the longest waiting first of
-- a queue, ...; running; dispatching flag; store keys; by status flat; counters flat; ready
-- by queue flat}.
promote(PROMOTE_BATCH)
flush_wakes()
local queues = redis.call('SMEMBERS', K_QUEUES)
local prios = {}
for p = 0, 10 do
  local lo = (10 - p) * BAND
  local minv, maxv = string.format('%.0f', lo), string.format('(%.0f', lo + BAND)
  local n, at = 0, ''
  for _, q in ipairs(queues) do
    local key = ready_key(q)
    local c = redis.call('ZCOUNT', key, minv, maxv)
    if c > 0 then
      n = n + c
      local first = redis.call('ZRANGEBYSCORE', key, minv, maxv, 'LIMIT', 0, 1)
      local rec = first[1] and load(first[1])
      if rec and not isnull(rec.ready_at)
          and (at == '' or tonumber(rec.ready_at) < tonumber(at)) then
        at = rec.ready_at
      end
    end
  end
  prios[#prios + 1] = n
  prios[#prios + 1] = at
end
local by_queue = {}
for _, q in ipairs(queues) do
  local c = redis.call('ZCARD', ready_key(q))
  if c > 0 then
    by_queue[#by_queue + 1] = q
    by_queue[#by_queue + 1] = c
  end
end
local keys = redis.call('ZCOUNT', K_KVIDX, '(' .. redis_ms(), '+inf')
return {prios, redis.call('ZCARD', K_LEASE), redis.call('HGET', K_DISPATCH, NODE) or '1', keys,
  redis.call('HGETALL', K_NSTATUS), redis.call('HGETALL', K_COUNTS), by_queue}

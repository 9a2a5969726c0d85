-- stats(): promote due tasks, then read the counts (O(priorities + counters), no record walk).
-- Returns {per priority 0..10: count, ready_at of the first, ...; running; dispatching flag;
-- store keys; by status flat; counters flat}.
promote(PROMOTE_BATCH)
local prios = {}
for p = 0, 10 do
  local lo = (10 - p) * BAND
  local minv, maxv = string.format('%.0f', lo), string.format('(%.0f', lo + BAND)
  local n = redis.call('ZCOUNT', K_READY, minv, maxv)
  local at = ''
  if n > 0 then
    local first = redis.call('ZRANGEBYSCORE', K_READY, minv, maxv, 'LIMIT', 0, 1)
    local rec = first[1] and load(first[1])
    if rec and not isnull(rec.ready_at) then at = rec.ready_at end
  end
  prios[#prios + 1] = n
  prios[#prios + 1] = at
end
local keys = redis.call('ZCOUNT', K_KVIDX, '(' .. redis_ms(), '+inf')
return {prios, redis.call('ZCARD', K_LEASE), redis.call('HGET', K_DISPATCH, NODE) or '1', keys,
  redis.call('HGETALL', K_NSTATUS), redis.call('HGETALL', K_COUNTS)}

-- expired(limit): read only. The held tasks whose lease deadline (Redis TIME) has passed:
-- {id, owner token, record json} * n.
local limit = tonumber(ARGV[A0 + 1])
local ids = redis.call('ZRANGEBYSCORE', K_LEASE, '-inf', redis_ms(), 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', K_OWNER, id) or ''
  out[#out + 1] = redis.call('HGET', K_TASK, id) or ''
end
return out

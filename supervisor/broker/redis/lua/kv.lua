-- The public store's index (standalone: not prefixed with common.lua). KEYS[1] is the index
-- zset (user key -> expiry ms on Redis TIME, +inf for none); KEYS[2] the value key, if any.
-- kv('set', key, value, ttl ms or ''), kv('del', key) -> 0/1, kv('size') -> live keys,
-- kv('cleanup') -> expired index entries dropped (the values expire natively).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
if op == 'set' then
  if ARGV[4] == '' then
    redis.call('SET', KEYS[2], ARGV[3])
    redis.call('ZADD', KEYS[1], '+inf', ARGV[2])
  else
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[4]), ARGV[2])
  end
  return 1
elseif op == 'del' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return redis.call('DEL', KEYS[2])
elseif op == 'size' then
  return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')
elseif op == 'cleanup' then
  return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
end
return redis.error_reply('kv: unknown op ' .. tostring(op))

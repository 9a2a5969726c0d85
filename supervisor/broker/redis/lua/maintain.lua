-- maintain(limit, sweep): promote due delayed tasks; with sweep '1' also forget finished
-- records past their retention and drop expired entries of the store's index.
-- Returns {promoted, records expired, keys expired}.
local limit = tonumber(ARGV[A0 + 1])
local promoted = promote(limit)
flush_wakes()
if ARGV[A0 + 2] ~= '1' then return {promoted, 0, 0} end
local old = redis.call('ZRANGEBYSCORE', K_EXPIRE, '-inf', NOW_MS, 'LIMIT', 0, limit)
for _, id in ipairs(old) do forget(id) end
local keys = redis.call('ZREMRANGEBYSCORE', K_KVIDX, '-inf', redis_ms())
return {promoted, #old, keys}

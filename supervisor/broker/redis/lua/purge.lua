-- purge(status, cutoff ms): forget finished records of status that finished before cutoff.
local status, cutoff = ARGV[A0 + 1], ARGV[A0 + 2]
local n = 0
local ids = redis.call('ZRANGEBYSCORE', K_DONE, '-inf', '(' .. cutoff)
for _, id in ipairs(ids) do
  local rec = load(id)
  if rec and rec.status == status then
    forget(id)
    n = n + 1
  end
end
return n

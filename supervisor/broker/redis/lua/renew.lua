-- renew(qc...): extend the leases of the tasks these consumers still hold to now + lease
-- (ZADD XX GT: never shortened, never re-created). Returns {lost ids, cancel-requested ids}.
local deadline = redis_ms() + LEASE_MS
local lost, cancels = {}, {}
for i = A0 + 1, #ARGV do
  local qc = ARGV[i]
  local id = redis.call('HGET', K_HELD, qc)
  if id then
    local rec = load(id)
    local ok = rec and rec.status == 'running'
      and redis.call('HGET', K_OWNER, id) == token(qc, rec.attempts)
      and redis.call('ZSCORE', K_LEASE, id)
    if ok then
      redis.call('ZADD', K_LEASE, 'XX', 'GT', deadline, id)
      if not isnull(rec.cancel_requested_at) then cancels[#cancels + 1] = id end
    else
      lost[#lost + 1] = id
    end
  end
end
return {lost, cancels}

-- retry(id): queue a dead or cancelled task again with its attempts reset. Returns 1, or 0 when
-- it is not dead/cancelled or another live task holds its unique key now.
local id = ARGV[A0 + 1]
local rec = load(id)
if not rec or (rec.status ~= 'dead' and rec.status ~= 'cancelled') then return 0 end
if not isnull(rec.unique_key) then
  local holder = redis.call('HGET', K_UNIQ, rec.unique_key)
  if holder and holder ~= id then
    local h = load(holder)
    if h and active(h.status) then return 0 end
  end
end
rec.attempts = 0
rec.eta = NULL
rec.finished_at = NULL
rec.cancel_requested_at = NULL
enqueue(rec, 'scheduled', false)
flush_wakes()
return 1

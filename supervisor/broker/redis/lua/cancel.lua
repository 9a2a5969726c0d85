-- cancel(id): 'cancelled' (it was waiting: finished at once), 'cancelling' (it runs: flagged,
-- its master sees it through renew / pending_cancels), 'finished' or 'unknown'.
local id = ARGV[A0 + 1]
local rec = load(id)
if not rec then return 'unknown' end
if not active(rec.status) then return 'finished' end
if isnull(rec.cancel_requested_at) then rec.cancel_requested_at = NOW end
if rec.status == 'running' then
  redis.call('HSET', K_CANCEL, id, rec.cancel_requested_at)
  save(rec)
  return 'cancelling'
end
finish(rec, 'cancelled')
return 'cancelled'

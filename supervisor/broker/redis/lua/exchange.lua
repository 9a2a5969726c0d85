-- exchange(qc, consumer, want, lease_ms, outcome, id, attempt, result, reason, error, traceback,
--          exit_status, fate, eta, lease ms by task type as JSON or '', queues, park ms):
-- report the held task (outcome '' for none), then take the next task when want is '1'; when
-- nothing is ready and park ms is > 0, park the consumer that long (its mailbox then gets a
-- task made ready meanwhile, see flush_wakes). Returns {lost, kind, ...}: lost is 1 when the
-- report was refused (fencing: the consumer no longer holds that attempt; nothing changed);
-- kind is 'task' (id, record json, params), 'none' (next delayed eta ms or ''), 'held' (id)
-- or 'off'.
local qc, consumer, want = ARGV[A0 + 1], ARGV[A0 + 2], ARGV[A0 + 3]
local lease_ms = tonumber(ARGV[A0 + 4])
local outcome, id = ARGV[A0 + 5], ARGV[A0 + 6]
local queues, park_ms = ARGV[A0 + 16], tonumber(ARGV[A0 + 17])
leave(qc) -- it is here, so it no longer waits
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
end

local function answer()
  if want ~= '1' then return {lost, 'none', ''} end
  if redis.call('HGET', K_DISPATCH, NODE) == '0' then return {lost, 'off'} end
  local held = redis.call('HGET', K_HELD, qc)
  if held then
    local h = load(held)
    local owner = redis.call('HGET', K_OWNER, held)
    if h and h.status == 'running' and owner == token(qc, h.attempts) then
      -- Taken for it while it was parked, and not received (its wait ended first, or the
      -- reply was lost): hand it over now.
      if undelivered(qc) then
        return {lost, 'task', held, redis.call('HGET', K_TASK, held),
          redis.call('HGET', K_PARAMS, held) or ''}
      end
      return {lost, 'held', held}
    end
    redis.call('HDEL', K_HELD, qc) -- a stale hold: its lease was recovered
  end
  promote(PROMOTE_BATCH)
  local lbt = nil
  if ARGV[A0 + 15] ~= '' then lbt = cjson.decode(ARGV[A0 + 15]) end
  local tid, blob, params = take(qc, consumer, sets_of(queues), lease_ms, lbt)
  if tid then return {lost, 'task', tid, blob, params} end
  if park_ms > 0 then park(qc, consumer, queues, lease_ms, ARGV[A0 + 15], redis_ms() + park_ms) end
  local nxt = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  return {lost, 'none', nxt[2] or ''}
end

local out = answer()
flush_wakes() -- what the report or the promotion made ready, for parked consumers
return out

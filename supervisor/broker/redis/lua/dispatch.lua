-- dispatch(on): switch this node's dispatching. Off: its parked consumers are no longer
-- parked and each gets a wake-up ('') in its mailbox, so their waits end at once (a take then
-- answers 'off'). Returns 1.
redis.call('HSET', K_DISPATCH, NODE, ARGV[A0 + 1])
if ARGV[A0 + 1] == '0' then
  local mine = NODE .. '/'
  local flat = redis.call('HGETALL', K_PARKED)
  for i = 1, #flat, 2 do
    local qc = flat[i]
    if string.sub(qc, 1, #mine) == mine then
      unpark(qc, flat[i + 1])
      send(qc, '')
    end
  end
end
return 1

-- push(n, [id, record json, params, unique key or ''] * n): all or none.
-- Returns {'ok', id...} (an id is the holder's when its unique key is held by a live task)
-- or {'dup', index, status} when an id is live (nothing written then).
local n = tonumber(ARGV[A0 + 1])
for i = 1, n do -- validate everything before the first write
  local old = load(ARGV[A0 + 2 + (i - 1) * 4])
  if old and active(old.status) then return {'dup', i, old.status} end
end
local out = {'ok'}
for i = 1, n do
  local base = A0 + 2 + (i - 1) * 4
  local id, ukey = ARGV[base], ARGV[base + 3]
  local holder = nil
  if ukey ~= '' then
    holder = redis.call('HGET', K_UNIQ, ukey)
    if holder then
      local h = load(holder)
      if not h or not active(h.status) then holder = nil end
    end
  end
  if holder then
    out[#out + 1] = holder
  else
    if redis.call('HEXISTS', K_TASK, id) == 1 then forget(id) end -- a finished id reused
    local rec = cjson.decode(ARGV[base + 1])
    redis.call('HSET', K_PARAMS, id, ARGV[base + 2])
    enqueue(rec, 'scheduled', false)
    counter('pushed', rec.type, '')
    out[#out + 1] = id
  end
end
flush_wakes()
return out

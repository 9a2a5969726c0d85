-- push(check, n, [id, record json, params, unique key or ''] * n): all or none.
-- Returns {'ok', id...} (an id is the holder's when its unique key is held by a live task),
-- {'dup', index, status} when an id is live, or, with check '1' (a producer that knows no task
-- types), {'unknown', index, type, known types...} when the nodes published their types and
-- this is none of them (nothing written then).
local check = ARGV[A0 + 1] == '1' and redis.call('HLEN', K_ROUTES) > 0
local n = tonumber(ARGV[A0 + 2])
local B = A0 + 1 -- the messages start at ARGV[B + 2]
local reused = {} -- ids of finished records pushed again
for i = 1, n do -- validate everything before the first write
  local old = load(ARGV[B + 2 + (i - 1) * 4])
  if old and active(old.status) then return {'dup', i, old.status} end
  if old then reused[i] = true end
  if check then
    local ttype = cjson.decode(ARGV[B + 3 + (i - 1) * 4]).type
    if redis.call('HEXISTS', K_ROUTES, ttype) == 0 then
      local out = {'unknown', i, ttype}
      for _, name in ipairs(redis.call('HKEYS', K_ROUTES)) do out[#out + 1] = name end
      return out
    end
  end
end
local out = {'ok'}
for i = 1, n do
  local base = B + 2 + (i - 1) * 4
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
    if reused[i] then forget(id) end -- a finished id pushed again
    local rec = cjson.decode(ARGV[base + 1])
    redis.call('HSET', K_PARAMS, id, ARGV[base + 2])
    enqueue(rec, 'scheduled', false)
    counter('pushed', rec.type, '')
    out[#out + 1] = id
  end
end
flush_wakes()
return out

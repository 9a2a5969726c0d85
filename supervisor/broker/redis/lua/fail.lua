-- fail(mode, n, [qc, id, attempt, reason, error, traceback, exit_status, fate, eta] * n):
-- end held attempts without success. mode 'release': the consumer qc is gone (fenced like a
-- report; also no longer parked). mode 'recover': the lease expired (re-checked here against
-- Redis TIME and the owner token; the consumer's stale hold stays, so renew can tell it the
-- lease was lost). In both, a task taken for a parked qc that never received it (still in its
-- mailbox) goes back to its place with the attempt not counted: it never started.
-- Returns the ids that were failed.
local mode, n = ARGV[A0 + 1], tonumber(ARGV[A0 + 2])
local now_ms = redis_ms()
local out = {}
for i = 1, n do
  local b = A0 + 3 + (i - 1) * 9
  local qc, id, attempt = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local rec = nil
  local reason = ARGV[b + 3]
  if mode == 'release' then
    leave(qc) -- gone: nothing more is handed to it
    rec = fenced(qc, id, attempt)
    if rec then redis.call('HDEL', K_HELD, qc) end
  else
    local deadline = redis.call('ZSCORE', K_LEASE, id)
    if deadline and tonumber(deadline) <= now_ms
        and redis.call('HGET', K_OWNER, id) == token(qc, attempt) then
      rec = load(id)
      if rec and rec.status ~= 'running' then rec = nil end
    end
  end
  if rec then
    if undelivered(qc) then reason = 'shutdown' end
    fail(rec, reason, ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], ARGV[b + 8])
    out[#out + 1] = id
  end
end
flush_wakes()
return out

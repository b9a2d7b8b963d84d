-- GCRA for a batch of decisions in one call, on Redis's clock (so replicas' clocks never matter).
-- KEYS[i]: a bucket. ARGV[3i-2], ARGV[3i-1], ARGV[3i]: emission interval and tolerance in
-- microseconds, and the cost (0 asks without charging). Decisions on one key see each other in
-- order. Only an allowed, charged decision writes, with a TTL that ends when the bucket is full
-- again, so denied floods cost no writes and idle keys vanish.
-- Returns, per decision: allowed (1 or 0), reset_after and retry_after in microseconds.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval * math.max(cost, 1)
  local allow_at = new_tat - tolerance
  if now < allow_at then
    out[3 * i - 2] = 0
    out[3 * i - 1] = tat - now
    out[3 * i] = allow_at - now
  else
    if cost > 0 then
      redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
    end
    out[3 * i - 2] = 1
    out[3 * i - 1] = new_tat - now
    out[3 * i] = 0
  end
end
return out

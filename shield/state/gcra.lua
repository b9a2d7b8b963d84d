-- GCRA for a batch of decisions in one call, on Redis's clock (so replicas' clocks never matter).
-- KEYS[i]: a bucket. ARGV[1]: per decision, in KEYS' order, "interval tolerance cost " (the
-- emission interval and tolerance in microseconds, and the cost: 0 asks without charging), all
-- in one argument so the client packs two arguments per decision rather than four. Decisions on
-- one key see each other in order. Only an allowed, charged decision writes, with a TTL that ends
-- when the bucket is full again, so denied floods cost no writes and idle keys vanish.
-- Returns, per decision: allowed (1 or 0), reset_after and retry_after in microseconds.
local _, fields = string.gsub(ARGV[1], ' ', ' ')
if fields ~= 3 * #KEYS then
  return redis.error_reply('gcra: ' .. #KEYS .. ' keys but ' .. fields .. ' numbers for them')
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
local i = 0
for interval, tolerance, cost in string.gmatch(ARGV[1], '(%d+) (%d+) (%d+) ') do
  i = i + 1
  interval = tonumber(interval)
  tolerance = tonumber(tolerance)
  cost = tonumber(cost)
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

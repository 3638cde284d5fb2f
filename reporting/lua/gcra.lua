-- A token bucket as GCRA (generic cell rate algorithm): the bucket is one timestamp, the
-- theoretical arrival time (TAT) of the next request, in microseconds on Redis's own clock, so
-- every API process shares one clock. One key per call: it stays in one Redis Cluster slot.
-- KEYS: 1 the bucket
-- ARGV: 1 emission interval (microseconds per token: 1e6 / rate), 2 burst (tokens),
--       3 cost (tokens, at most the burst)
-- Returns {allowed (1 or 0), tokens left, microseconds until this cost would be allowed (0 when
-- allowed)}. A refused request changes nothing; the key expires when the bucket is full again.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  local left = math.floor((now - (tat - burst * interval)) / interval)
  return {0, math.max(left, 0), allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0}

-- The budget part of the ad server's answer, for the campaigns of one budget shard on a Redis Cluster
-- (one slot), or for all of them on one server.
-- Read only. KEYS: per campaign, its budget-day spend, lifetime spend and pacing-state keys.
-- ARGV: the pacing hash's fields to read. Returns, per campaign, the two spends then the fields.
local out = {}
local n = #KEYS / 3
for i = 0, n - 1 do
  out[#out + 1] = redis.call('GET', KEYS[3 * i + 1]) or false
  out[#out + 1] = redis.call('GET', KEYS[3 * i + 2]) or false
  local fields = redis.call('HMGET', KEYS[3 * i + 3], unpack(ARGV))
  for j = 1, #fields do
    out[#out + 1] = fields[j]
  end
end
return out

-- Claim the decision of one order, once: the first claim wins and every later
-- claim (a redelivery, a replay, another worker) gets the stored one back.
-- An organic order is claimed too (empty payload), so a late duplicate of it
-- is recognised and never decided again.
-- KEYS[1] claim key, KEYS[2] cancel marker, KEYS[3] pending hash (same bucket)
-- ARGV[1] pending field, ARGV[2] decision payload ('' for an organic order), ARGV[3] TTL (ms)
-- Returns the stored claim "<cancelled 0|1>|<payload>".
redis.call('HDEL', KEYS[3], ARGV[1])
local existing = redis.call('GET', KEYS[1])
if existing then
  return existing
end
local claim = redis.call('EXISTS', KEYS[2]) .. '|' .. ARGV[2]
redis.call('SET', KEYS[1], claim, 'PX', ARGV[3])
return claim

-- A cancel takes effect: if its order is claimed, return the claim so the caller
-- refunds it; otherwise leave a marker so the order, when decided, is not charged.
-- KEYS[1] claim key, KEYS[2] cancel marker, KEYS[3] pending hash (same bucket)
-- ARGV[1] pending field, ARGV[2] TTL (ms)
redis.call('HDEL', KEYS[3], ARGV[1])
local existing = redis.call('GET', KEYS[1])
if existing then
  return existing
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return false

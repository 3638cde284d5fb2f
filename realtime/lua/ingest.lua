-- Ingest a batch of one user bucket's events (all KEYS share the bucket's hash tag).
-- ARGV[1] retention of touches (ms), ARGV[2] TTL of counts (ms), ARGV[3] oldest event
-- time still counted, ARGV[4] a JSON array of ops (one argument, not six per event:
-- packing arguments is the client's main cost), each an array of 6 fields:
--   't', touches key index, counts key index (0: do not count), member, score, counts field
--   'p', claim key index (0 for a cancel), pending key index, pending field, payload, ''
-- Returns one integer per op:
--   touch: 1 new, 0 already known (ZADD NX makes redelivery a no-op)
--   pending: 1 newly pending, 2 already pending, 0 already decided (nothing to do)
local retention = tonumber(ARGV[1])
local counts_ttl = tonumber(ARGV[2])
local count_floor = tonumber(ARGV[3])
local out = {}
for _, op in ipairs(cjson.decode(ARGV[4])) do
  if op[1] == 't' then
    local zkey = KEYS[op[2]]
    local ckey_idx = op[3]
    local score = op[5]
    local added = redis.call('ZADD', zkey, 'NX', score, op[4])
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', string.format('(%d', score - retention))
    redis.call('PEXPIRE', zkey, retention)
    if added == 1 and ckey_idx > 0 and score >= count_floor then
      local ckey = KEYS[ckey_idx]
      redis.call('HINCRBY', ckey, op[6], 1)
      redis.call('PEXPIRE', ckey, counts_ttl)
    end
    out[#out + 1] = added
  else
    local claim_idx = op[2]
    local pkey = KEYS[op[3]]
    if claim_idx > 0 and redis.call('EXISTS', KEYS[claim_idx]) == 1 then
      out[#out + 1] = 0
    elseif redis.call('HSETNX', pkey, op[4], op[5]) == 1 then
      out[#out + 1] = 1
    else
      out[#out + 1] = 2
    end
  end
end
return out

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
-- Per call, not per touch: the newest score of each touched key (trim and expire
-- once at the end) and the sum of each counter field (one HINCRBY per field).
local newest = {}
local counts = {}
for _, op in ipairs(cjson.decode(ARGV[4])) do
  if op[1] == 't' then
    local zkey = KEYS[op[2]]
    local score = op[5]
    local added = redis.call('ZADD', zkey, 'NX', score, op[4])
    if newest[zkey] == nil or score > newest[zkey] then newest[zkey] = score end
    if added == 1 and op[3] > 0 and score >= count_floor then
      local ckey = KEYS[op[3]]
      local fields = counts[ckey]
      if fields == nil then fields = {}; counts[ckey] = fields end
      fields[op[6]] = (fields[op[6]] or 0) + 1
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
for zkey, score in pairs(newest) do
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', string.format('(%d', score - retention))
  redis.call('PEXPIRE', zkey, retention)
end
for ckey, fields in pairs(counts) do
  for field, n in pairs(fields) do
    redis.call('HINCRBY', ckey, field, n)
  end
  redis.call('PEXPIRE', ckey, counts_ttl)
end
return out

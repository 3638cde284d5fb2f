-- contract: touch_member = kind|campaign_id|arrival_wm|event_id
-- contract: count_field = campaign_id|counter
-- contract: pending_field = o:order_id x:order_id
-- Ingest a batch of one user bucket's events (all KEYS share the bucket's hash tag).
-- ARGV[1] retention of touches (ms), ARGV[2] TTL of counts (ms), ARGV[3] trim bound: touches
-- older than it can earn no order still to be decided, ARGV[4] a JSON array of ops (one
-- argument, not six per event: packing arguments is the client's main cost):
--   {'t', touches key index, counts key index, member, score, counts field}
--   {'p', claim key index (0 for a cancel), pending key index, pending field, payload}
-- Returns one integer per op:
--   touch: 1 new, 0 already known (a redelivery changes nothing)
--   pending: 1 newly pending, 2 already pending, 0 already decided (nothing to do)
-- Reads and checks first, then writes: an error leaves nothing behind.
local MAX = 9007199254740991  -- 2^53 - 1: every counter stays exact in Lua's doubles
local retention = tonumber(ARGV[1])
local counts_ttl = tonumber(ARGV[2])
local trim_bound = tonumber(ARGV[3])
local ops = cjson.decode(ARGV[4])
local out, touches, pendings, seen, newest, counts = {}, {}, {}, {}, {}, {}
for i, op in ipairs(ops) do
  if op[1] == 't' then
    local zkey = KEYS[op[2]]
    local id = zkey .. '\n' .. op[4]
    if seen[id] or redis.call('ZSCORE', zkey, op[4]) then
      out[i] = 0
    else
      seen[id] = true
      out[i] = 1
      touches[#touches + 1] = op
      if newest[zkey] == nil or op[5] > newest[zkey] then newest[zkey] = op[5] end
      local ckey = KEYS[op[3]]
      local fields = counts[ckey]
      if fields == nil then fields = {}; counts[ckey] = fields end
      fields[op[6]] = (fields[op[6]] or 0) + 1
    end
  else
    local pkey = KEYS[op[3]]
    local id = pkey .. '\n' .. op[4]
    if op[2] > 0 and redis.call('EXISTS', KEYS[op[2]]) == 1 then
      out[i] = 0
    elseif seen[id] or redis.call('HEXISTS', pkey, op[4]) == 1 then
      out[i] = 2
    else
      seen[id] = true
      out[i] = 1
      pendings[#pendings + 1] = op
    end
  end
end
for ckey, fields in pairs(counts) do
  for field, n in pairs(fields) do
    if tonumber(redis.call('HGET', ckey, field) or '0') + n > MAX then
      return redis.error_reply('counter ' .. field .. ' would pass 2^53 - 1')
    end
  end
end
-- writes below: nothing above this line writes
for _, op in ipairs(touches) do
  redis.call('ZADD', KEYS[op[2]], op[5], op[4])
end
for _, op in ipairs(pendings) do
  redis.call('HSET', KEYS[op[3]], op[4], op[5])
end
for zkey, _ in pairs(newest) do
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', string.format('(%d', trim_bound))
  redis.call('PEXPIRE', zkey, retention)
end
for ckey, fields in pairs(counts) do
  for field, n in pairs(fields) do
    redis.call('HINCRBY', ckey, field, n)
  end
  redis.call('PEXPIRE', ckey, counts_ttl)
end
return out

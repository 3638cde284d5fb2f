-- contract: touch_member = kind|campaign_id|arrival_wm|digest|event_id
-- contract: touch_ids = event_id -> score
-- contract: count_field = campaign_id|counter
-- contract: pending_field = o:order_id x:order_id|digest
-- contract: pending_record = digest|payload
-- contract: claim = cancelled|digest|decision
-- contract: ingest_ops = touch:t pending:p replace_touch:r replace_pending:P
-- contract: ingest_status = known:0 new:1 pending:2 conflict_decided:3 replaced:4 changed:5 too_late:6
-- Ingest a batch of one bucket's events (all KEYS share the bucket's hash tag: touches live in
-- their user's bucket, orders and cancels in their order id's). The identity rule
-- (shared_logic.identity) decides between copies; this script finds them and never compares
-- ranks (Python does, byte for byte): it returns the standing copy of a conflict, and the
-- caller sends a replace op when the new copy ranks lower.
-- ARGV[1] retention of touches (ms) by kind code (a JSON object: {"v": ms, "c": ms}), ARGV[2] TTL
-- of counts (ms), ARGV[3] trim base: no order still to be decided is released before it, so a
-- touch older than the base minus its kind's retention can earn nothing, ARGV[4] a JSON array of
-- ops (one argument, not many per event: packing arguments is the client's main cost):
--   {'t', touches key, touch ids key, counts key, event_id, member, score, counts field, digest}
--   {'p', claim key (0 for a cancel), pending key, pending field, record, digest}
--   {'r', touches key, touch ids key, old counts key, new counts key, event_id, old member,
--         new member, score, old counts field, new counts field}
--   {'P', claim key, pending key, pending field, old record, new record}
-- (key positions are 1-based indexes into KEYS; the last KEYS is the bucket's trim floor: the
-- greatest trim base applied to it, kept as long as the longest retention). Returns one value per op:
--   't': 1 new, 0 known (the same copy: nothing changes, counters included), 6 too late (older
--        than the floor minus its kind's retention: a replay by a worker that does not know how
--        far the bucket went; nothing changes, counters included, as it was trimmed or counted
--        before), or the standing copy's {member, score} when the new one conflicts with it
--   'p': 1 newly pending, 2 the same copy is pending, 0 the same order was decided, 3 another
--        copy of the order was decided (a late conflicting copy), or the standing record when
--        another copy is pending (orders only: a cancel's field names its digest, so only the
--        same copy of a cancel finds one)
--   'r', 'P': 4 replaced, 5 changed meanwhile (the standing copy is not the one given; nothing done)
-- Reads and checks first, then writes: an error leaves nothing behind.
local MAX = 9007199254740991  -- 2^53 - 1: every counter stays exact in Lua's doubles
local retention = cjson.decode(ARGV[1])
local counts_ttl = tonumber(ARGV[2])
local floor_key = KEYS[#KEYS]
local stored_floor = tonumber(redis.call('GET', floor_key) or '0')
local base = math.max(tonumber(ARGV[3]), stored_floor)
-- a member's kind code is its first field; a user's keys live as long as their longest-kept touch
local function code_of(member)
  return string.match(member, '^([^|]*)|')
end
local trim_bound, youngest, longest = {}, nil, 0  -- per kind; the greatest bound; the longest retention
for code, ms in pairs(retention) do
  trim_bound[code] = base - ms
  if youngest == nil or trim_bound[code] > youngest then youngest = trim_bound[code] end
  if ms > longest then longest = ms end
end
local ops = cjson.decode(ARGV[4])
local out, writes, seen, newest, counts = {}, {}, {}, {}, {}
local function count(ckey, field, n)
  local fields = counts[ckey]
  if fields == nil then fields = {}; counts[ckey] = fields end
  fields[field] = (fields[field] or 0) + n
end
local function digest_of(member)
  return string.match(member, '^[^|]*|[^|]*|[^|]*|([^|]*)|')
end
-- a touch's member, found from its event id: its ids hash holds its score, and the member of
-- that score naming the event id is it (one member per event id: the identity rule)
local function standing_touch(zkey, hkey, event_id)
  local score = redis.call('HGET', hkey, event_id)
  if not score then
    return nil
  end
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', zkey, score, score)) do
    -- the event id is all after the fourth '|' (it may hold '|' itself: compare it whole)
    if string.match(member, '^[^|]*|[^|]*|[^|]*|[^|]*|(.*)$') == event_id then
      return {member, tonumber(score)}
    end
  end
  return nil
end
local function fmt(n) return string.format('%d', n) end
for i, op in ipairs(ops) do
  local code = op[1]
  if code == 't' then
    local zkey, hkey = KEYS[op[2]], KEYS[op[3]]
    local id = hkey .. '\n' .. op[5]
    local standing = seen[id]
    if standing == nil then
      standing = standing_touch(zkey, hkey, op[5])
    end
    if standing == nil and op[7] < trim_bound[code_of(op[6])] then
      out[i] = 6
    elseif standing == nil then
      seen[id] = {op[6], op[7]}
      out[i] = 1
      writes[#writes + 1] = {'t', zkey, hkey, op[5], op[6], op[7]}
      local keep = retention[code_of(op[6])]
      if newest[zkey] == nil then newest[zkey] = {hkey, keep} end
      if keep > newest[zkey][2] then newest[zkey][2] = keep end
      count(KEYS[op[4]], op[8], 1)
    elseif digest_of(standing[1]) == op[9] then
      out[i] = 0
    else
      out[i] = {standing[1], string.format('%d', standing[2])}
    end
  elseif code == 'p' then
    local pkey = KEYS[op[3]]
    local id = pkey .. '\n' .. op[4]
    local claim = op[2] > 0 and redis.call('GET', KEYS[op[2]])
    if claim then
      local claimed = string.match(claim, '^[^|]*|([^|]*)|')
      out[i] = (claimed == op[6]) and 0 or 3
    else
      local standing = seen[id] or redis.call('HGET', pkey, op[4])
      if not standing then
        seen[id] = op[5]
        out[i] = 1
        writes[#writes + 1] = {'p', pkey, op[4], op[5]}
      elseif op[2] == 0 or string.match(standing, '^([^|]*)|') == op[6] then
        out[i] = 2
      else
        out[i] = standing
      end
    end
  elseif code == 'r' then
    local hkey = KEYS[op[3]]
    if redis.call('HEXISTS', hkey, op[6]) == 1 and redis.call('ZSCORE', KEYS[op[2]], op[7]) then
      out[i] = 4
      writes[#writes + 1] = {'r', KEYS[op[2]], hkey, op[6], op[7], op[8], op[9]}
      local keep = retention[code_of(op[8])]
      if newest[KEYS[op[2]]] == nil then newest[KEYS[op[2]]] = {hkey, keep} end
      if keep > newest[KEYS[op[2]]][2] then newest[KEYS[op[2]]][2] = keep end
      count(KEYS[op[4]], op[10], -1)
      count(KEYS[op[5]], op[11], 1)
    else
      out[i] = 5
    end
  else  -- 'P'
    local pkey = KEYS[op[3]]
    if redis.call('EXISTS', KEYS[op[2]]) == 0 and redis.call('HGET', pkey, op[4]) == op[5] then
      out[i] = 4
      writes[#writes + 1] = {'p', pkey, op[4], op[6]}
    else
      out[i] = 5
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
for _, w in ipairs(writes) do
  if w[1] == 't' then
    redis.call('ZADD', w[2], w[6], w[5])
    redis.call('HSET', w[3], w[4], fmt(w[6]))
  elseif w[1] == 'r' then
    redis.call('ZREM', w[2], w[5])
    redis.call('ZADD', w[2], w[7], w[6])
    redis.call('HSET', w[3], w[4], fmt(w[7]))
  else
    redis.call('HSET', w[2], w[3], w[4])
  end
end
if base > stored_floor then
  redis.call('SET', floor_key, string.format('%d', base), 'PX', longest)
end
for zkey, top in pairs(newest) do
  local hkey, keep = top[1], top[2]
  -- each touch older than its own kind's bound goes
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', string.format('(%d', youngest), 'WITHSCORES')
  local gone, n = {}, 0
  for j = 1, #old, 2 do
    local member = old[j]
    if tonumber(old[j + 1]) < trim_bound[code_of(member)] then
      n = n + 1
      gone[n] = member
      redis.call('HDEL', hkey, string.match(member, '^[^|]*|[^|]*|[^|]*|[^|]*|(.*)$'))
    end
  end
  if n > 0 then
    for j = 1, n, 1000 do
      redis.call('ZREM', zkey, unpack(gone, j, math.min(j + 999, n)))
    end
  end
  -- never shorten: the set may hold a touch of a kind kept longer than those written now
  if redis.call('PTTL', zkey) < keep then
    redis.call('PEXPIRE', zkey, keep)
    redis.call('PEXPIRE', hkey, keep)
  end
end
for ckey, fields in pairs(counts) do
  for field, n in pairs(fields) do
    redis.call('HINCRBY', ckey, field, n)
  end
  redis.call('PEXPIRE', ckey, counts_ttl)
end
return out

-- contract: queue_member = kind|order_id
-- contract: charge_record = charge|day|refunded
-- contract: no_cap = -1
-- contract: stats_fields = orders revenue spend capped_orders refunds
-- contract: ledger_fields = kind charge capped day due d
-- contract: budget_event_fields = type scope campaign_id day spend cap due_ms
-- contract: settle_status = nothing:0 charged:1 stopped:2 refunded:3 refused:-1
-- contract: settle_payload = m cid price dcap lcap day amount ch sd sl st d
-- contract: settle_modes = charge cancelled refund
-- Settle one budget shard: enqueue the caller's released actions, then charge, stop or refund
-- every queued action released strictly below the bound, in settlement order (the queue is
-- scored by release time; equal scores sort by member, decisions '0|…' before cancels '1|…'),
-- exactly once each. Mirrors shared_logic's ChargeBook and apply_caps (a property test holds
-- them equal). Every key lives in the shard's hash-tag slot: KEYS name the shard's own keys;
-- an action names its charge, spend and stats keys (same slot) in its payload.
-- KEYS: 1 queue (zset), 2 queued payloads (hash), 3 ledger stream, 4 budget-events stream
-- ARGV: 1 bound (ms), 2 most actions to settle, 3 TTL (ms), 4 budget-events MAXLEN,
--       5 a JSON array of new actions {release ms, member, payload}; a payload is a JSON object:
--       m ('charge' | 'cancelled' | 'refund'), cid, price, dcap, lcap, day (budget day), amount,
--       ch, sd, sl, st (charge record, budget-day spend, lifetime spend, stats keys), d (decision)
-- Returns {member, status, charge, capped, daily exhausted, lifetime exhausted} per settled
-- action; status 1 charged, 2 stopped (cancelled first), 3 refunded, 0 nothing to do (settled
-- before), -1 refused (a counter would pass 2^53 - 1).
-- Reads and plans first (later actions see earlier ones), checks, then writes: an error
-- leaves nothing behind.
local MAX = 9007199254740991  -- 2^53 - 1: every counter stays exact in Lua's doubles
local bound, limit, ttl, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local new = cjson.decode(ARGV[5])
local function fmt(n) return string.format('%d', n) end

-- 1. what to settle: queued actions below the bound, and new ones, in order
local entries, known = {}, {}
local queued = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. fmt(bound), 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #queued, 2 do
  local member = queued[i]
  known[member] = true
  entries[#entries + 1] = {tonumber(queued[i + 1]), member, redis.call('HGET', KEYS[2], member), true}
end
local cutoff = nil  -- the queue holds more below the bound than was read: settle no further
if #queued == 2 * limit then cutoff = entries[#entries] end
local function before(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
local enqueue = {}
for _, n in ipairs(new) do
  if not known[n[2]] and not redis.call('ZSCORE', KEYS[1], n[2]) then
    known[n[2]] = true
    local e = {n[1], n[2], n[3], false}
    if n[1] < bound and (cutoff == nil or before(e, cutoff)) then
      entries[#entries + 1] = e
    else
      enqueue[#enqueue + 1] = e
    end
  end
end
table.sort(entries, before)

-- 2. plan every effect against a cache of what the keys hold
local strings, hashes, streams, results = {}, {}, {}, {}
local function get(key)
  if strings[key] == nil then strings[key] = {redis.call('GET', key) or false, nil} end
  return strings[key][1]
end
local function put(key, value, mode)
  -- A key set with a TTL in this call keeps it, whatever a later action of the call does.
  if strings[key] ~= nil and strings[key][2] == 'px' then mode = 'px' end
  strings[key] = {value, mode}
end
local function hget(key, field)
  local h = hashes[key]
  if h == nil then h = {}; hashes[key] = h end
  if h[field] == nil then h[field] = {tonumber(redis.call('HGET', key, field) or '0'), false} end
  return h[field][1]
end
local function hadd(key, field, n)
  local v = hget(key, field) + n
  hashes[key][field] = {v, true}
end
local function budget_event(kind, scope, cid, day, spend, cap, due)
  streams[#streams + 1] = {KEYS[4], {'type', kind, 'scope', scope, 'campaign_id', cid, 'day', day,
    'spend', fmt(spend), 'cap', fmt(cap), 'due_ms', fmt(due)}}
end
local function ledger(kind, charge, capped, day, due, d)
  streams[#streams + 1] = {KEYS[3], {'kind', kind, 'charge', fmt(charge), 'capped', capped,
    'day', day, 'due', fmt(due), 'd', d}}
end

for _, e in ipairs(entries) do
  local due, member, p = e[1], e[2], cjson.decode(e[3])
  local rec = get(p.ch)
  local status, charge, capped, dex, lex = 0, 0, 0, 0, 0
  if p.m == 'charge' and not rec then
    local spent_d, spent_l = tonumber(get(p.sd) or '0'), tonumber(get(p.sl) or '0')
    local dcap, lcap = p.dcap, p.lcap
    charge = p.price
    if dcap >= 0 then charge = math.min(charge, math.max(dcap - spent_d, 0)) end
    if lcap >= 0 then charge = math.min(charge, math.max(lcap - spent_l, 0)) end
    if spent_d + charge > MAX or spent_l + charge > MAX or hget(p.st, 'revenue') + p.amount > MAX then
      status = -1
    else
      status = 1
      if charge < p.price then capped = 1 end
      put(p.sd, fmt(spent_d + charge), 'px')
      put(p.sl, fmt(spent_l + charge), 'keep')
      hadd(p.st, 'orders', 1)
      hadd(p.st, 'revenue', p.amount)
      hadd(p.st, 'spend', charge)
      hadd(p.st, 'capped_orders', capped)
      put(p.ch, fmt(charge) .. '|' .. p.day .. '|0', 'px')
      ledger('charge', charge, capped, p.day, due, p.d)
      if dcap >= 0 and spent_d + charge >= dcap then
        dex = 1
        if spent_d < dcap then budget_event('exhausted', 'daily', p.cid, p.day, spent_d + charge, dcap, due) end
      end
      if lcap >= 0 and spent_l + charge >= lcap then
        lex = 1
        if spent_l < lcap then budget_event('exhausted', 'lifetime', p.cid, p.day, spent_l + charge, lcap, due) end
      end
    end
  elseif p.m == 'cancelled' and not rec then
    status = 2
    put(p.ch, '0|' .. p.day .. '|1', 'px')
    ledger('cancelled', 0, 0, p.day, due, p.d)
  elseif p.m == 'refund' and rec then
    local sep1 = string.find(rec, '|', 1, true)
    local sep2 = string.find(rec, '|', sep1 + 1, true)
    local day = string.sub(rec, sep1 + 1, sep2 - 1)
    if string.sub(rec, sep2 + 1) ~= '1' then
      status = 3
      charge = tonumber(string.sub(rec, 1, sep1 - 1))
      put(p.ch, fmt(charge) .. '|' .. day .. '|1', 'keep')
      if charge > 0 then
        local spent_d, spent_l = tonumber(get(p.sd) or '0'), tonumber(get(p.sl) or '0')
        put(p.sd, fmt(spent_d - charge), get(p.sd) and 'keep' or 'px')
        put(p.sl, fmt(spent_l - charge), 'keep')
        local dcap, lcap = p.dcap, p.lcap
        local was_out = (dcap >= 0 and spent_d >= dcap) or (lcap >= 0 and spent_l >= lcap)
        local now_out = (dcap >= 0 and spent_d - charge >= dcap) or (lcap >= 0 and spent_l - charge >= lcap)
        if was_out and not now_out then
          budget_event('resumed', 'refund', p.cid, day, spent_d - charge, dcap, due)
        end
      end
      hadd(p.st, 'orders', -1)
      hadd(p.st, 'revenue', 0 - p.amount)
      hadd(p.st, 'spend', 0 - charge)
      hadd(p.st, 'refunds', 1)
      ledger('refund', 0 - charge, 0, day, due, p.d)
    end
  end
  results[#results + 1] = {member, status, fmt(charge), capped, dex, lex}
end

-- writes below: nothing above this line writes
for key, v in pairs(strings) do
  if v[2] == 'px' then
    redis.call('SET', key, v[1], 'PX', ttl)
  elseif v[2] == 'keep' then
    redis.call('SET', key, v[1], 'KEEPTTL')
  end
end
for key, fields in pairs(hashes) do
  local changed = false
  for field, v in pairs(fields) do
    if v[2] then
      redis.call('HSET', key, field, fmt(v[1]))
      changed = true
    end
  end
  if changed then redis.call('PEXPIRE', key, ttl) end
end
for _, s in ipairs(streams) do
  if s[1] == KEYS[4] then
    redis.call('XADD', s[1], 'MAXLEN', '~', maxlen, '*', unpack(s[2]))
  else
    redis.call('XADD', s[1], '*', unpack(s[2]))
  end
end
for _, e in ipairs(entries) do
  if e[4] then
    redis.call('ZREM', KEYS[1], e[2])
    redis.call('HDEL', KEYS[2], e[2])
  end
end
for _, e in ipairs(enqueue) do
  redis.call('ZADD', KEYS[1], e[1], e[2])
  redis.call('HSET', KEYS[2], e[2], e[3])
end
return results

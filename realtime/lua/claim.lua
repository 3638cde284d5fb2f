-- contract: claim = cancelled|digest|decision
-- contract: pending_record = digest|payload
-- contract: claim_ops = decide:o cancel:x
-- contract: claim_superseded = -
-- Claim the decisions of a user bucket's released orders, and apply its released cancels, in
-- settlement order (all KEYS share the bucket's hash tag). The first claim of an order wins:
-- every later one (a redelivery, a replay, another worker) gets the stored claim back. An
-- organic order is claimed too (empty decision), so a late duplicate is never decided again.
-- A cancel of an order not claimed yet leaves a marker holding its time (distinct times, at
-- most MAX_MARKS): the order's claim says cancelled when one of them lies in the order's cancel
-- window [lo, hi) (``shared_logic.settlement.cancel_counts``), as the batch layer decides.
-- ARGV[1] TTL (ms), ARGV[2] a JSON array of actions, each
--   {'o' (decide), claim key index, cancel marker key index, decision or '', lo, hi,
--    pending key index, pending field, digest of the order event} or
--   {'x' (cancel), claim key index, cancel marker key index, '', cancel time}
-- Returns one string per action: the order's claim "<cancelled 0|1>|<digest>|<decision>", ''
-- for a cancel of an order not claimed yet, or '-' for an order another copy superseded (the
-- identity rule: its pending record now holds a copy of lower rank, which its own release decides).
-- Reads and plans first (later actions see earlier ones of the same call), then writes.
local MAX_MARKS = 64
local ttl = ARGV[1]
local acts = cjson.decode(ARGV[2])
local state, writes, out = {}, {}, {}
local function get(key)
  if state[key] == nil then
    state[key] = redis.call('GET', key) or false
  end
  return state[key]
end
local function superseded(pkey, field, digest)
  local record = redis.call('HGET', pkey, field)
  return record and string.match(record, '^([^|]*)|') ~= digest
end
local function marked_within(marks, lo, hi)
  if not marks then
    return false
  end
  for t in string.gmatch(marks, '%S+') do
    local ms = tonumber(t)
    if ms >= lo and ms < hi then
      return true
    end
  end
  return false
end
for i, a in ipairs(acts) do
  local claim_key, marker_key = KEYS[a[2]], KEYS[a[3]]
  local existing = get(claim_key)
  if existing then
    out[i] = existing
  elseif a[1] == 'o' and superseded(KEYS[a[7]], a[8], a[9]) then
    out[i] = '-'
  elseif a[1] == 'o' then
    local claim = (marked_within(get(marker_key), a[5], a[6]) and '1' or '0') .. '|' .. a[9] .. '|' .. a[4]
    state[claim_key] = claim
    writes[#writes + 1] = {claim_key, claim}
    out[i] = claim
  else
    local marks = get(marker_key) or ''
    local t = string.format('%d', a[5])
    local seen, n = false, 0
    for m in string.gmatch(marks, '%S+') do
      n = n + 1
      if m == t then
        seen = true
      end
    end
    if not seen and n < MAX_MARKS then
      marks = (marks == '' and t) or (marks .. ' ' .. t)
      state[marker_key] = marks
      writes[#writes + 1] = {marker_key, marks}
    end
    out[i] = ''
  end
end
-- writes below: nothing above this line writes
for _, w in ipairs(writes) do
  redis.call('SET', w[1], w[2], 'PX', ttl)
end
return out

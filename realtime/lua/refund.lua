-- Refund the charge of a cancelled order, once. Mirrors ChargeBook._cancel.
-- KEYS: 1 charge record, 2 spend of the budget day, 3 lifetime spend, 4 stats of the
--       order's UTC day, 5 ledger stream, 6 budget-events stream (one budget shard)
-- ARGV: 1 campaign id, 2 daily cap (-1), 3 lifetime cap (-1), 4 order amount, 5 TTL (ms),
--       6 budget-events MAXLEN, 7 due (ms), 8 decision payload, 9 budget day
-- Returns {1, refunded amount} or {0, reason}.
local rec = redis.call('GET', KEYS[1])
if not rec then
  -- Claimed but not charged yet (another worker is between claim and charge):
  -- settle it as cancelled so that charge finds the record and charges nothing.
  redis.call('SET', KEYS[1], '0|' .. ARGV[9] .. '|1', 'PX', ARGV[5])
  redis.call('XADD', KEYS[5], '*', 'kind', 'cancelled', 'charge', 0, 'capped', 0, 'day', ARGV[9],
    'due', ARGV[7], 'd', ARGV[8])
  return {0, 'cancelled before charge'}
end
local sep1 = string.find(rec, '|', 1, true)
local sep2 = string.find(rec, '|', sep1 + 1, true)
-- (0 - x, never -x: Lua's -0 is not an integer to HINCRBY)
local charge = tonumber(string.sub(rec, 1, sep1 - 1))
local day = string.sub(rec, sep1 + 1, sep2 - 1)
if string.sub(rec, sep2 + 1) == '1' then
  return {0, 'already refunded'}
end
redis.call('SET', KEYS[1], charge .. '|' .. day .. '|1', 'KEEPTTL')
local dcap, lcap = tonumber(ARGV[2]), tonumber(ARGV[3])
local spent_d = tonumber(redis.call('GET', KEYS[2]) or '0')
local spent_l = tonumber(redis.call('GET', KEYS[3]) or '0')
if charge > 0 then
  redis.call('DECRBY', KEYS[2], charge)
  redis.call('DECRBY', KEYS[3], charge)
  local was_out = (dcap >= 0 and spent_d >= dcap) or (lcap >= 0 and spent_l >= lcap)
  local now_out = (dcap >= 0 and spent_d - charge >= dcap) or (lcap >= 0 and spent_l - charge >= lcap)
  if was_out and not now_out then
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'type', 'resumed', 'scope', 'refund',
      'campaign_id', ARGV[1], 'day', day, 'spend', spent_d - charge, 'cap', dcap, 'due_ms', ARGV[7])
  end
end
redis.call('HINCRBY', KEYS[4], 'orders', -1)
redis.call('HINCRBY', KEYS[4], 'revenue', 0 - tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[4], 'spend', 0 - charge)
redis.call('HINCRBY', KEYS[4], 'refunds', 1)
redis.call('XADD', KEYS[5], '*', 'kind', 'refund', 'charge', 0 - charge, 'capped', 0, 'day', day,
  'due', ARGV[7], 'd', ARGV[8])
return {1, charge}

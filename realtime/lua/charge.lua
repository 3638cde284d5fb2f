-- Charge one claimed order, once: check, cut to the caps, spend, record, flag
-- exhaustion and append to the ledger, atomically. Mirrors shared_logic's
-- ChargeBook._decide and apply_caps (a property test holds them equal).
-- KEYS: 1 charge record, 2 spend of the budget day, 3 lifetime spend, 4 stats of the
--       order's UTC day, 5 ledger stream, 6 budget-events stream (one budget shard)
-- ARGV: 1 mode ('charge' | 'cancelled'), 2 order id, 3 campaign id, 4 price,
--       5 daily cap (-1: none), 6 lifetime cap (-1: none), 7 budget day, 8 order amount,
--       9 TTL (ms), 10 budget-events MAXLEN, 11 due (ms), 12 decision payload
-- Returns {1, charge, capped, daily exhausted, lifetime exhausted} for a new charge,
-- {0, stored record} when the order was settled before.
local rec = redis.call('GET', KEYS[1])
if rec then
  return {0, rec}
end
local mode, campaign, price = ARGV[1], ARGV[3], tonumber(ARGV[4])
local dcap, lcap, day = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local charge, capped, refunded, dex, lex = 0, 0, 0, 0, 0
local kind = 'charge'
if mode == 'cancelled' then
  kind = 'cancelled'
  refunded = 1
else
  local spent_d = tonumber(redis.call('GET', KEYS[2]) or '0')
  local spent_l = tonumber(redis.call('GET', KEYS[3]) or '0')
  charge = price
  if dcap >= 0 then charge = math.min(charge, math.max(dcap - spent_d, 0)) end
  if lcap >= 0 then charge = math.min(charge, math.max(lcap - spent_l, 0)) end
  if charge < price then capped = 1 end
  if charge > 0 then
    redis.call('INCRBY', KEYS[2], charge)
    redis.call('INCRBY', KEYS[3], charge)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[9])
  redis.call('HINCRBY', KEYS[4], 'orders', 1)
  redis.call('HINCRBY', KEYS[4], 'revenue', ARGV[8])
  redis.call('HINCRBY', KEYS[4], 'spend', charge)
  redis.call('HINCRBY', KEYS[4], 'capped_orders', capped)
  redis.call('PEXPIRE', KEYS[4], ARGV[9])
  if dcap >= 0 and spent_d + charge >= dcap then
    dex = 1
    if spent_d < dcap then
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'type', 'exhausted', 'scope', 'daily',
        'campaign_id', campaign, 'day', day, 'spend', spent_d + charge, 'cap', dcap, 'due_ms', ARGV[11])
    end
  end
  if lcap >= 0 and spent_l + charge >= lcap then
    lex = 1
    if spent_l < lcap then
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'type', 'exhausted', 'scope', 'lifetime',
        'campaign_id', campaign, 'day', day, 'spend', spent_l + charge, 'cap', lcap, 'due_ms', ARGV[11])
    end
  end
end
redis.call('SET', KEYS[1], charge .. '|' .. day .. '|' .. refunded, 'PX', ARGV[9])
redis.call('XADD', KEYS[5], '*', 'kind', kind, 'charge', charge, 'capped', capped, 'day', day,
  'due', ARGV[11], 'd', ARGV[12])
return {1, charge, capped, dex, lex}

-- contract: ledger_intent = first_id last_id
-- Commit a ledger flush of one budget shard, once the lake holds the range its intent names:
-- record the range as flushed, trim the stream past it and clear the intent. Only while the
-- intent still names that range: of flushers racing on a shard (they all write the same range,
-- into the same file), one commits and the others commit nothing.
-- KEYS[1] the shard's flush intent, KEYS[2] its last flushed id, KEYS[3] its ledger stream
-- ARGV[1] the intent as written ("<first id> <last id>"), ARGV[2] the last id, ARGV[3] the
-- smallest id kept (the one after the last)
-- Returns 1 committed, 0 not (the intent names another range, or none).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
-- writes below: nothing above this line writes
redis.call('SET', KEYS[2], ARGV[2])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[3])
redis.call('DEL', KEYS[1])
return 1

-- The frequency part of the ad server's answer, for one user (one user bucket, one slot).
-- Read only. KEYS: the user's impression sets of the candidates with a frequency cap.
-- ARGV: now (epoch ms), then per key the cap's window in ms. Returns per key the impressions
-- inside the rolling window (now - window, now].
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local lo = now - tonumber(ARGV[i + 1])
  out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. lo, now)
end
return out

-- Put a jti on the deny list; a later expiry wins.
-- KEYS[1] deny key; ARGV[1] expires_at (ms since epoch), ARGV[2] ttl (ms)
local old = redis.call('GET', KEYS[1])
if old and tonumber(old) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1

-- Make a jti the family's current refresh token when the family is live.
-- KEYS[1] family hash; ARGV[1] new jti, ARGV[2] new expires_at (ms), ARGV[3] now (ms), ARGV[4] ttl (ms)
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'revoked') == 1 then
  return 0
end
local exp = tonumber(redis.call('HGET', KEYS[1], 'expires'))
if exp <= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'current', ARGV[1])
if tonumber(ARGV[2]) > exp then
  redis.call('HSET', KEYS[1], 'expires', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1

-- Compare-and-set the current refresh jti of a family; a mismatch revokes the family (reuse).
-- KEYS[1] family hash
-- ARGV[1] presented jti, ARGV[2] new jti, ARGV[3] new expires_at (ms), ARGV[4] now (ms), ARGV[5] ttl (ms)
local cur = redis.call('HGET', KEYS[1], 'current')
if not cur then
  return 'unknown'
end
if tonumber(redis.call('HGET', KEYS[1], 'expires')) <= tonumber(ARGV[4]) then
  return 'unknown'
end
if redis.call('HEXISTS', KEYS[1], 'revoked') == 1 then
  return 'revoked'
end
if cur ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'revoked', ARGV[4])
  return 'reused'
end
redis.call('HSET', KEYS[1], 'current', ARGV[2], 'expires', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 'rotated'

-- Rotate a session id: delete the old hash, write the new one, fix the user's index. Atomic.
-- KEYS[1] old hash, KEYS[2] new hash, KEYS[3] user index set
-- ARGV[1] ttl (ms), ARGV[2] old digest, ARGV[3] new digest, ARGV[4] index ttl (ms), ARGV[5..] field/value pairs
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4], 'GT')
redis.call('PEXPIRE', KEYS[3], ARGV[4], 'NX')
return 1

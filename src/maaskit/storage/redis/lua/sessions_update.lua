-- Set hash fields of a session only when it still exists, then reset its TTL.
-- KEYS[1] session hash; ARGV[1] ttl in ms ('' keeps the TTL), ARGV[2..] field/value pairs.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[1] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1

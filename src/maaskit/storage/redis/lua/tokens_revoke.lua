-- Revoke families: KEYS are family hashes; ARGV[1] now (ms). Returns how many were revoked.
local count = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 and redis.call('HEXISTS', key, 'revoked') == 0 then
    redis.call('HSET', key, 'revoked', ARGV[1])
    count = count + 1
  end
end
return count

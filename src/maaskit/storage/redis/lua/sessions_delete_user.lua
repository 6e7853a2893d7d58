-- Delete every session in a user's index, and the index. Atomic.
-- KEYS[1] user index set; ARGV[1] session key prefix. Returns how many sessions were deleted.
local count = 0
for _, digest in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  count = count + redis.call('DEL', ARGV[1] .. digest)
end
redis.call('DEL', KEYS[1])
return count

-- maaskit: release open reservations created before a cutoff (a crashed replica's), atomically.
-- KEYS: the open-reservation index (sorted set: reservation key -> creation time in ms).
-- ARGV: cutoff_ms (exclusive), limit, settled_ttl_s
-- Returns {released, scanned}. Each scanned entry leaves the index: an open reservation is
-- released as a settle would (reserved -= amount on each budget, status 'e', nothing
-- committed); one already settled or gone (its hash expired) is only dropped from the index.
local index = KEYS[1]
local ids = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local settled_ttl = tonumber(ARGV[3])
local released = 0
for _, res_key in ipairs(ids) do
  local st = redis.call('HMGET', res_key, 's', 'a', 'n')
  if st[1] == 'o' then
    local amount_s = st[2]
    if tonumber(amount_s) > 0 then
      for j = 1, tonumber(st[3]) do
        local key = redis.call('HGET', res_key, 'b' .. j)
        if key and redis.call('EXISTS', key) == 1 then
          redis.call('HINCRBY', key, 'r', '-' .. amount_s)
        end
      end
    end
    redis.call('HSET', res_key, 's', 'e', 'c', '0', 'v', '0')
    redis.call('EXPIRE', res_key, settled_ttl)
    released = released + 1
  end
  redis.call('ZREM', index, res_key)
end
return {released, #ids}

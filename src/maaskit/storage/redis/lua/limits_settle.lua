-- maaskit: settle one admission = rate corrections + reservation commit/release, one round trip.
-- KEYS: na rate keys, then the reservation key and the open-reservation index (when has_res == 1).
-- ARGV: now_ms (-1: server TIME), na, {delta, limit, period_ms} * na,
--       has_res, mode ('c' commit | 'r' release), actual_micros, settled_ttl_s
-- Returns {0} (no reservation), {1, mode, committed, overage, already (0|1)} or {-404}.
-- Rate corrections are applied only by the call that settles the reservation (or always
-- when there is none), so a retried settle never corrects twice.
local na = tonumber(ARGV[2])
local a = 3 + 3 * na
local has_res = tonumber(ARGV[a])
local result = {0}
if has_res == 1 then
  local res_key = KEYS[na + 1]
  local st = redis.call('HMGET', res_key, 's', 'a', 'n', 'c', 'v')
  if not st[1] then
    redis.call('ZREM', KEYS[na + 2], res_key)
    return {-404}
  end
  if st[1] ~= 'o' then
    return {1, st[1], tonumber(st[4]), tonumber(st[5]), 1}
  end
  local mode = ARGV[a + 1]
  local amount_s = st[2]
  local amount = tonumber(amount_s)
  local committed_s = '0'
  local overage = 0
  if mode == 'c' then
    local actual_s = ARGV[a + 2]
    local actual = tonumber(actual_s)
    if actual < amount then committed_s = actual_s else committed_s = amount_s; overage = actual - amount end
  end
  local overage_s = string.format('%.0f', overage)
  local n = tonumber(st[3])
  for j = 1, n do
    local key = redis.call('HGET', res_key, 'b' .. j)
    if amount > 0 then redis.call('HINCRBY', key, 'r', '-' .. amount_s) end
    if committed_s ~= '0' then redis.call('HINCRBY', key, 'c', committed_s) end
    if overage > 0 then redis.call('HINCRBY', key, 'v', overage_s) end
  end
  redis.call('HSET', res_key, 's', mode, 'c', committed_s, 'v', overage_s)
  redis.call('EXPIRE', res_key, tonumber(ARGV[a + 3]))
  redis.call('ZREM', KEYS[na + 2], res_key)
  result = {1, mode, tonumber(committed_s), overage, 0}
end
if na > 0 then
  local now = tonumber(ARGV[1])
  if now < 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local b = 3
  for i = 1, na do
    local delta = tonumber(ARGV[b])
    local limit = tonumber(ARGV[b + 1])
    local period = tonumber(ARGV[b + 2])
    b = b + 3
    local s = redis.call('HMGET', KEYS[i], 'l', 't')
    local level = tonumber(s[1]) or 0
    local ts = tonumber(s[2]) or now
    if now > ts then
      level = level - (now - ts) * limit
      if level < 0 then level = 0 end
      ts = now
    end
    level = level + delta * period
    if level < 0 then level = 0 end
    if level > 2 * limit * period then level = 2 * limit * period end
    redis.call('HSET', KEYS[i], 'l', string.format('%.0f', level), 't', string.format('%.0f', ts))
    redis.call('PEXPIRE', KEYS[i], math.ceil(level / limit) + 1000)
  end
end
return result

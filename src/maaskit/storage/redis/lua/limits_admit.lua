-- maaskit: one admission = GCRA rate checks + budget reservation, all or nothing, one round trip.
-- KEYS: nr rate keys, then nb budget keys, then the reservation key and the open-reservation
--       index (a sorted set: reservation key scored by its creation time in ms) (when nb > 0).
-- ARGV: now_ms (-1: use the server's TIME), nr, {cost, limit, period_ms} * nr,
--       nb, amount, reservation_ttl_s, {limit_micros, ttl_s (0: never expires)} * nb
-- Returns {ok, now_ms, {allowed, level} * nr, {committed, reserved, overage} * nb}
-- or {-409} when the reservation id already exists.
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local nr = tonumber(ARGV[2])
local a = 3
local ok = 1
local out = {0, now}
local pending = {}
for i = 1, nr do
  local cost = tonumber(ARGV[a])
  local limit = tonumber(ARGV[a + 1])
  local period = tonumber(ARGV[a + 2])
  a = a + 3
  local st = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = tonumber(st[1]) or 0
  local ts = tonumber(st[2]) or now
  if now > ts then
    level = level - (now - ts) * limit
    if level < 0 then level = 0 end
    ts = now
  end
  local want = level + cost * period
  if want <= limit * period then
    pending[i] = {want, ts, limit}
    out[#out + 1] = 1
  else
    ok = 0
    out[#out + 1] = 0
  end
  out[#out + 1] = level
end
local nb = tonumber(ARGV[a])
local amount_s = ARGV[a + 1]
local amount = tonumber(amount_s)
local res_ttl = tonumber(ARGV[a + 2])
a = a + 3
local res_key = KEYS[nr + nb + 1]
if nb > 0 and redis.call('EXISTS', res_key) == 1 then
  return {-409}
end
local expires = {}
for j = 1, nb do
  local limit = tonumber(ARGV[a])
  expires[j] = tonumber(ARGV[a + 1])
  a = a + 2
  local b = redis.call('HMGET', KEYS[nr + j], 'c', 'r', 'v')
  local c = tonumber(b[1]) or 0
  local r = tonumber(b[2]) or 0
  local v = tonumber(b[3]) or 0
  if c + r + amount > limit then ok = 0 end
  out[#out + 1] = c
  out[#out + 1] = r
  out[#out + 1] = v
end
out[1] = ok
if ok == 0 then return out end
local k = 3
for i = 1, nr do
  local p = pending[i]
  redis.call('HSET', KEYS[i], 'l', string.format('%.0f', p[1]), 't', string.format('%.0f', p[2]))
  redis.call('PEXPIRE', KEYS[i], math.ceil(p[1] / p[3]) + 1000)
  out[k + 1] = p[1]
  k = k + 2
end
if nb > 0 then
  local fields = {'s', 'o', 'a', amount_s, 'n', nb}
  for j = 1, nb do
    local key = KEYS[nr + j]
    redis.call('HINCRBY', key, 'r', amount_s)
    if expires[j] > 0 then redis.call('EXPIRE', key, expires[j]) end
    out[k + 1] = out[k + 1] + amount
    k = k + 3
    fields[#fields + 1] = 'b' .. j
    fields[#fields + 1] = key
  end
  redis.call('HSET', res_key, unpack(fields))
  redis.call('EXPIRE', res_key, res_ttl)
  redis.call('ZADD', KEYS[nr + nb + 2], now, res_key)
end
return out

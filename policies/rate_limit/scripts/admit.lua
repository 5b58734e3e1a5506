-- Admission: check every bucket one request touches, then charge all of them or none.
--
-- KEYS[i]  bucket i
-- ARGV[1]  this request's member in concurrency sets; ARGV[2] its safety expiry (ms)
-- ARGV[3 + 4(i-1) ..]  kind, limit, cost, extra of bucket i, where kind is
--   "b"  token bucket of `limit` refilled evenly over `extra` ms (requests or tokens)
--   "c"  in-flight requests: a sorted set of members scored by their expiry
--   "q"  quota: tokens used in a calendar window that ends at unix ms `extra`
--
-- Returns {1, 0, 0, remaining_1, reset_ms_1, ...} when admitted and charged, or
-- {0, i, retry_ms, ...} when refused by bucket i (the one that frees up last); nothing
-- is charged then. `reset_ms` is the time until the bucket is back to its full state.
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local member, ttl = ARGV[1], tonumber(ARGV[2])
local QUOTA_GRACE_MS = 3600000 -- a quota outlives its window while answers settle

local level, remaining, reset = {}, {}, {}
local refused, retry = 0, 0

for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 4
  local kind, limit = ARGV[at], tonumber(ARGV[at + 1])
  local cost, extra = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local wait = 0
  if kind == "b" then
    local state = redis.call("HMGET", key, "v", "t")
    local lvl = limit
    if state[1] then
      lvl = math.min(limit, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * limit / extra)
    end
    level[i] = lvl
    if lvl < cost then
      wait = math.ceil((cost - lvl) * extra / limit)
      remaining[i], reset[i] = math.max(0, math.floor(lvl)), math.ceil((limit - lvl) * extra / limit)
    else
      remaining[i], reset[i] = math.floor(lvl - cost), math.ceil((limit - lvl + cost) * extra / limit)
    end
  elseif kind == "c" then
    redis.call("ZREMRANGEBYSCORE", key, "-inf", now)
    local count = redis.call("ZCARD", key)
    if count + 1 > limit then
      wait = 1000 -- until one in flight ends: unknowable here
      remaining[i] = 0
    else
      remaining[i] = limit - count - 1
    end
    reset[i] = 0
  else
    local used = tonumber(redis.call("GET", key) or "0")
    level[i] = used
    reset[i] = math.max(0, extra - now)
    if used + cost > limit then
      wait = reset[i]
      remaining[i] = math.max(0, limit - used)
    else
      remaining[i] = limit - used - cost
    end
  end
  if wait > 0 and wait >= retry then
    refused, retry = i, wait
  end
end

local out = {refused == 0 and 1 or 0, refused, retry}
for i = 1, #KEYS do
  out[#out + 1] = remaining[i]
  out[#out + 1] = reset[i]
end
if refused > 0 then
  return out
end

for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 4
  local kind, limit = ARGV[at], tonumber(ARGV[at + 1])
  local cost, extra = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  if kind == "b" then
    local lvl = level[i] - cost
    redis.call("HSET", key, "v", tostring(lvl), "t", now)
    redis.call("PEXPIRE", key, math.ceil((limit - lvl) * extra / limit) + 1000)
  elseif kind == "c" then
    redis.call("ZADD", key, now + ttl, member)
    redis.call("PEXPIRE", key, ttl + 1000)
  else
    redis.call("INCRBY", key, cost)
    redis.call("PEXPIREAT", key, extra + QUOTA_GRACE_MS)
  end
end
return out

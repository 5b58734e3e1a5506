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

local level, wait = {}, {}
local refused, retry = 0, 0

for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 4
  local kind, limit = ARGV[at], tonumber(ARGV[at + 1])
  local cost, extra = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local lvl
  wait[i] = 0
  if kind == "b" then -- level: tokens in the bucket
    local state = redis.call("HMGET", key, "v", "t")
    lvl = limit
    if state[1] then
      lvl = math.min(limit, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * limit / extra)
    end
    if lvl < cost then
      wait[i] = math.ceil((cost - lvl) * extra / limit)
    end
  elseif kind == "c" then -- level: free slots
    redis.call("ZREMRANGEBYSCORE", key, "-inf", now)
    lvl = limit - redis.call("ZCARD", key)
    if lvl < 1 then
      wait[i] = 1000 -- until one in flight ends: unknowable here
    end
  else -- level: tokens left in the window
    lvl = limit - tonumber(redis.call("GET", key) or "0")
    if lvl < cost then
      wait[i] = math.max(1, extra - now)
    end
  end
  level[i] = lvl
  if wait[i] > 0 and wait[i] >= retry then
    refused, retry = i, wait[i]
  end
end

-- What is left in each bucket (after this request's charge, if admitted) and how long
-- until it is full again.
local out = {refused == 0 and 1 or 0, refused, retry}
for i = 1, #KEYS do
  local at = 3 + (i - 1) * 4
  local kind, limit = ARGV[at], tonumber(ARGV[at + 1])
  local cost, extra = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local left = level[i]
  if refused == 0 then
    left = left - (kind == "c" and 1 or cost)
  end
  local reset = 0
  if kind == "b" then
    reset = math.ceil((limit - left) * extra / limit)
  elseif kind == "q" then
    reset = math.max(0, extra - now)
  end
  out[#out + 1] = math.max(0, math.floor(left))
  out[#out + 1] = reset
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

-- Admission: check every bucket one request touches, then charge all of them or none.
--
-- KEYS[i]  bucket i
-- ARGV[1]  this request's member in concurrency sets; ARGV[2] its safety expiry (ms)
-- ARGV[3 + 4(i-1) ..]  kind, limit, cost, extra of bucket i, where kind is
--   "b"  token bucket of `limit` refilled evenly over `extra` ms (requests or tokens)
--   "c"  in-flight requests: a sorted set of members scored by their expiry
--   "d", "m"  quota: tokens used in the current UTC day or month, a hash of the
--        window's end in unix ms ("e") and the tokens used in it ("v"); the window
--        comes from Redis's clock, like everything else here, never the caller's
--   (`extra` is unused by "c", "d" and "m")
--
-- Returns {1, 0, 0, now, remaining_1, reset_ms_1, ...} when admitted and charged, or
-- {0, i, retry_ms, now, ...} when refused by bucket i (the one that frees up last);
-- nothing is charged then. `now` is Redis's time in unix ms, `reset_ms` the time until
-- the bucket is back to its full state (for a quota: until its window ends).
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local member, ttl = ARGV[1], tonumber(ARGV[2])
local QUOTA_GRACE_MS = 3600000 -- a quota outlives its window while answers settle
local DAY_MS = 86400000

-- The end of the UTC day ("d") or month ("m") that `now` is in, in unix ms.
local function window_end(kind)
  local days = math.floor(now / DAY_MS) -- unix days: 86400 s each, leap seconds aside
  if kind == "d" then
    return (days + 1) * DAY_MS
  end
  -- The civil date of `days` (Howard Hinnant's days_to_civil, in eras of 400 years).
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153) -- months from March
  local day = doy - math.floor((153 * mp + 2) / 5) -- of the month, from 0
  local year = yoe + era * 400 + (mp >= 10 and 1 or 0)
  local month = mp < 10 and mp + 3 or mp - 9
  local length = ({31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31})[month]
  if month == 2 and year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0) then
    length = 29
  end
  return (days - day + length) * DAY_MS
end

local level, wait, ends = {}, {}, {}
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
  else -- level: tokens left in the current window (a hash of a past one counts none)
    local state = redis.call("HMGET", key, "e", "v")
    ends[i] = window_end(kind)
    lvl = limit
    if tonumber(state[1]) == ends[i] then
      lvl = limit - tonumber(state[2])
    end
    if lvl < cost then
      wait[i] = ends[i] - now
    end
  end
  level[i] = lvl
  if wait[i] > 0 and wait[i] >= retry then
    refused, retry = i, wait[i]
  end
end

-- What is left in each bucket (after this request's charge, if admitted) and how long
-- until it is full again.
local out = {refused == 0 and 1 or 0, refused, retry, now}
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
  elseif kind ~= "c" then
    reset = ends[i] - now
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
    redis.call("HSET", key, "e", ends[i], "v", limit - level[i] + cost)
    redis.call("PEXPIREAT", key, ends[i] + QUOTA_GRACE_MS)
  end
end
return out

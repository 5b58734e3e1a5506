-- Completion: charge the difference between what a request reserved and what it used,
-- and release its in-flight slot.
--
-- KEYS[i]  bucket i
-- ARGV[1]  the request's member in concurrency sets
-- ARGV[2 + 4(i-1) ..]  kind, limit, delta, extra of bucket i (kinds as in admit.lua);
--   delta = tokens used - tokens reserved (negative gives tokens back); for a quota,
--   extra = the end of the window the admission charged (a later window is not touched)
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local member = ARGV[1]

for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 4
  local kind, limit = ARGV[at], tonumber(ARGV[at + 1])
  local delta, extra = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  if kind == "b" then
    local state = redis.call("HMGET", key, "v", "t")
    local lvl = limit
    if state[1] then
      lvl = math.min(limit, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * limit / extra)
    end
    -- Usage beyond the reservation becomes debt, all of it: a request bigger than the
    -- whole bucket (admitted on a full bucket) is waited out until its usage refilled.
    lvl = math.min(limit, lvl - delta)
    redis.call("HSET", key, "v", tostring(lvl), "t", now)
    redis.call("PEXPIRE", key, math.ceil((limit - lvl) * extra / limit) + 1000)
  elseif kind == "c" then
    redis.call("ZREM", key, member)
  else
    local state = redis.call("HMGET", key, "e", "v")
    if tonumber(state[1]) == extra then
      redis.call("HSET", key, "v", math.max(0, tonumber(state[2]) + delta))
    end
  end
end
return #KEYS

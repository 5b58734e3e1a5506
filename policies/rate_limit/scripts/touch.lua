-- Keep the in-flight slots of a request that is still running: push their expiry back.
-- A slot already gone (freed, or expired) is not taken again.
--
-- KEYS[i]  concurrency set i
-- ARGV[1]  the request's member in them; ARGV[2] its safety expiry from now (ms)
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local member, ttl = ARGV[1], tonumber(ARGV[2])
local kept = 0

for _, key in ipairs(KEYS) do
  if redis.call("ZSCORE", key, member) then
    redis.call("ZADD", key, now + ttl, member)
    redis.call("PEXPIRE", key, ttl + 1000)
    kept = kept + 1
  end
end
return kept

-- A slot of one upstream for one request, when the requests in flight to it from every
-- gateway replica leave one free (`gateway.leases`).
--
-- KEYS[1]  the upstream's leases: a sorted set of members scored by their expiry (unix ms)
-- KEYS[2]  the replicas with requests waiting for it: a sorted set scored by expiry
-- ARGV[1]  the upstream's limit; ARGV[2] the new member; ARGV[3] its expiry (ms from now)
-- ARGV[4]  this replica's id; ARGV[5] how long its wish to be served stands (ms)
-- ARGV[6]  "take", or "peek": only hear who else waits
-- ARGV[7]  "1": requests wait in this replica (its queue calls); "0": one arrived, and
--          waits only if refused
--
-- Returns {taken (1 or 0), how many other replicas wait}.
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local limit, member, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local replica, wish, waiting = ARGV[4], tonumber(ARGV[5]), ARGV[7] == "1"

redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now)
local taken = 0
if ARGV[6] == "take" and redis.call("ZCARD", KEYS[1]) < limit then
  redis.call("ZADD", KEYS[1], now + ttl, member)
  redis.call("PEXPIRE", KEYS[1], ttl)
  taken = 1
end
if waiting or taken == 0 then
  redis.call("ZADD", KEYS[2], now + wish, replica)
  redis.call("PEXPIRE", KEYS[2], wish)
end
local others = redis.call("ZCARD", KEYS[2])
if redis.call("ZSCORE", KEYS[2], replica) then
  others = others - 1
end
return {taken, others}

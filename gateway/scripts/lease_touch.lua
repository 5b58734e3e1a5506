-- Push back the expiry of the leases one replica holds on one upstream, while their
-- requests run (`gateway.leases`); a lease Redis lost (restarted, flushed) is set again.
--
-- KEYS[1]  the upstream's leases (see lease.lua)
-- ARGV[1]  the new expiry, in ms from now; ARGV[2..] the members
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call("ZADD", KEYS[1], now + ttl, ARGV[i])
end
redis.call("PEXPIRE", KEYS[1], ttl)
return #ARGV - 1

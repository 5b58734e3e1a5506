-- The embedded store's keyspace: the Redis commands the rate-limit scripts use, with
-- Redis's replies and millisecond expiry, in Lua tables. Loaded once; returns the
-- `redis` table the scripts call, and the functions the Python side drives.
local data, kinds, expires = {}, {}, {}
local now = 0

local function drop(key)
  data[key], kinds[key], expires[key] = nil, nil, nil
end

local function get(key, kind)
  local deadline = expires[key]
  if deadline and deadline <= now then
    drop(key)
    return nil
  end
  local value = data[key]
  if value ~= nil and kinds[key] ~= kind then
    error("WRONGTYPE Operation against a key holding the wrong kind of value", 0)
  end
  return value
end

local function create(key, kind)
  local value = get(key, kind)
  if value == nil then
    value = {}
    data[key], kinds[key] = value, kind
  end
  return value
end

local function number(value)
  return string.format("%.17g", value)
end

local function expire_at(key, at)
  if get(key, kinds[key]) == nil then
    return 0
  end
  expires[key] = tonumber(at)
  return 1
end

local function count(set)
  local n = 0
  for _ in pairs(set) do
    n = n + 1
  end
  return n
end

local commands = {
  TIME = function()
    return {tostring(math.floor(now / 1000)), tostring(now % 1000 * 1000)}
  end,
  PEXPIRE = function(key, ms)
    return expire_at(key, now + tonumber(ms))
  end,
  PEXPIREAT = expire_at,
  HMGET = function(key, ...)
    local hash = get(key, "hash") or {}
    local out = {}
    for i, field in ipairs({...}) do
      out[i] = hash[field] or false
    end
    return out
  end,
  HSET = function(key, ...)
    local hash, args, added = create(key, "hash"), {...}, 0
    for i = 1, #args, 2 do
      if hash[args[i]] == nil then
        added = added + 1
      end
      local value = args[i + 1]
      hash[args[i]] = type(value) == "number" and number(value) or value
    end
    return added
  end,
  ZADD = function(key, score, member)
    local set = create(key, "zset")
    local added = set[member] == nil and 1 or 0
    set[member] = tonumber(score)
    return added
  end,
  ZSCORE = function(key, member)
    local set = get(key, "zset")
    local score = set and set[member]
    return score and number(score) or false
  end,
  ZREM = function(key, member)
    local set = get(key, "zset")
    if set == nil or set[member] == nil then
      return 0
    end
    set[member] = nil
    if next(set) == nil then
      drop(key)
    end
    return 1
  end,
  ZCARD = function(key)
    local set = get(key, "zset")
    return set and count(set) or 0
  end,
  ZREMRANGEBYSCORE = function(key, low, high)
    local set = get(key, "zset")
    if set == nil then
      return 0
    end
    low = low == "-inf" and -math.huge or tonumber(low)
    high = tonumber(high)
    local removed = 0
    for member, score in pairs(set) do
      if score >= low and score <= high then
        set[member] = nil
        removed = removed + 1
      end
    end
    if next(set) == nil then
      drop(key)
    end
    return removed
  end,
}

local redis = {}
function redis.call(name, ...)
  local command = commands[name] or commands[string.upper(name)]
  if command == nil then
    error("ERR the embedded store does not offer " .. tostring(name), 0)
  end
  return command(...)
end

-- Sets the time a script sees (it stands still during one script, as in Redis).
local function begin(ms)
  now = ms
end

-- Drops every expired key; run now and then so keys nobody reads again go too.
local function sweep()
  for key, deadline in pairs(expires) do
    if deadline <= now then
      drop(key)
    end
  end
  return count(data)
end

return redis, begin, sweep

-- Token bucket, taken atomically in one round trip. Loaded by interceptors/rate_limit.py.
--
-- KEYS[1]  bucket key (a hash: tokens = tokens left, ts = last refill in microseconds)
-- ARGV[1]  rate: tokens added per second (may be fractional)
-- ARGV[2]  burst: capacity of the bucket
-- ARGV[3]  cost: tokens this call takes (0 = only look, take nothing)
-- ARGV[4]  ttl in milliseconds: idle buckets expire after it (at least burst/rate, when a
--          bucket is full again, so expiring it loses nothing)
--
-- Time: there is no "now" argument. The script reads the Redis server clock with TIME, so
-- every Tally replica sees one clock and skew between the replicas' hosts cannot mint or
-- burn tokens. If the Redis clock goes backwards (failover to another host), elapsed time
-- counts as zero: tokens are never created by a clock step.
--
-- Returns {allowed, remaining, retry_ms}:
--   allowed    1 if the cost was taken, else 0
--   remaining  tokens left, as a string ("%.6f"; Redis would truncate a Lua number to integer)
--   retry_ms   0 when allowed; else milliseconds until `cost` tokens are there;
--              -1 when cost > burst: the call can never succeed, however long it waits

-- Redis < 5 refuses writes after a non-deterministic command (TIME) unless effects are
-- replicated; from Redis 5 on that is the default and this call is a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local ttl_ms = tonumber(ARGV[4])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end

local elapsed = now - ts
if elapsed < 0 then
  elapsed = 0
end
tokens = math.min(burst, tokens + elapsed * rate / 1000000)

-- Tolerate float rounding: 0.1 + 0.2 tokens must pay for a cost of 0.3.
local EPSILON = 1e-9

if cost > burst then
  return {0, string.format('%.6f', tokens), -1}
end

if tokens + EPSILON >= cost then
  if cost > 0 then
    tokens = math.max(0, tokens - cost)
    -- Lua would format numbers with %.14g, losing digits of a microsecond timestamp.
    redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.0f', now))
    redis.call('PEXPIRE', key, ttl_ms)
  end
  return {1, string.format('%.6f', tokens), 0}
end

-- Refused: nothing to write; the stored state still yields the same refill later.
local retry_ms = math.ceil((cost - tokens) * 1000 / rate)
if retry_ms < 1 then
  retry_ms = 1
end
return {0, string.format('%.6f', tokens), retry_ms}

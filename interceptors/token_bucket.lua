-- Token bucket with per-process reservations, taken atomically in one round trip.
-- Loaded by interceptors/rate_limit.py.
--
-- KEYS[1]  bucket key, a hash:
--            tokens   tokens in the bucket, outside any reservation
--            ts       last refill, Redis clock in microseconds
--            held     tokens reserved by processes and not yet settled
--            nexp     earliest expiry (microseconds) among the reservations, 0 if none
--            h:<id>   tokens reserved by holder <id> (one reservation per holder)
--            e:<id>   when that reservation expires (microseconds)
-- ARGV[1]  rate: tokens added per second (may be fractional)
-- ARGV[2]  burst: capacity of the bucket
-- ARGV[3]  cost: tokens this call takes (0 = only look, take nothing)
-- ARGV[4]  ttl in milliseconds: idle buckets expire after it (at least burst/rate, when a
--          bucket is full again, so expiring it loses nothing)
-- ARGV[5]  holder id, or "" for a plain per-call take (ARGV[6..9] are then ignored)
-- ARGV[6]  refund: tokens of the holder's previous reservation it did not spend; they go
--          back into the bucket (never more than that reservation held)
-- ARGV[7]  want: extra tokens to reserve for the holder after taking `cost`
-- ARGV[8]  hold_ms: the new reservation expires after this many milliseconds
-- ARGV[9]  floor: reserve only while at least this many tokens stay in the bucket after it
--
-- Invariant: tokens + held <= burst. Refill stops at burst - held, so reserved tokens count as
-- present; a reservation moves tokens from `tokens` to `held`, spending it locally changes
-- nothing here, settling it releases `held` and returns the unspent part. A reservation whose
-- holder never settles (crashed, lost Redis, went idle) expires at e:<id>; its tokens then
-- count as spent (they may have been), so an expiry never mints tokens.
--
-- Time: there is no "now" argument. The script reads the Redis server clock with TIME, so
-- every Tally replica sees one clock and skew between the replicas' hosts cannot mint or
-- burn tokens. If the Redis clock goes backwards (failover to another host), elapsed time
-- counts as zero: tokens are never created by a clock step.
--
-- Returns {allowed, remaining, retry_ms, reserved}:
--   allowed    1 if the cost was taken, else 0
--   remaining  tokens left in the bucket outside reservations, as a string ("%.6f"; Redis
--              would truncate a Lua number to integer)
--   retry_ms   0 when allowed; else milliseconds until `cost` tokens are there;
--              -1 when cost > burst: the call can never succeed, however long it waits
--   reserved   tokens reserved for the holder by this call (0: none; a plain take)

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
local holder = ARGV[5] or ''
local refund = tonumber(ARGV[6]) or 0
local want = tonumber(ARGV[7]) or 0
local hold_ms = tonumber(ARGV[8]) or 0
local floor = tonumber(ARGV[9]) or 0

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local state = redis.call('HMGET', key, 'tokens', 'ts', 'held', 'nexp')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
local held = tonumber(state[3]) or 0
local nexp = tonumber(state[4]) or 0
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
  held = 0
  nexp = 0
end
local dirty = false

-- Reservations past their expiry: forget them, their tokens count as spent.
if held > 0 and now >= nexp then
  local all = redis.call('HGETALL', key)
  local fields = {}
  for i = 1, #all, 2 do
    fields[all[i]] = all[i + 1]
  end
  held = 0
  nexp = 0
  for field, value in pairs(fields) do
    if string.sub(field, 1, 2) == 'e:' then
      local id = string.sub(field, 3)
      local expires = tonumber(value) or 0
      if expires <= now then
        redis.call('HDEL', key, field, 'h:' .. id)
      else
        held = held + (tonumber(fields['h:' .. id]) or 0)
        if nexp == 0 or expires < nexp then
          nexp = expires
        end
      end
    end
  end
  dirty = true
end

-- Refill up to burst - held: reserved tokens still count as in the bucket.
local elapsed = now - ts
if elapsed < 0 then
  elapsed = 0
end
local cap = burst - held
if tokens < cap then
  tokens = math.min(cap, tokens + elapsed * rate / 1000000)
end

-- The holder settles its previous reservation: release it, return what it did not spend.
if holder ~= '' then
  local previous = tonumber(redis.call('HGET', key, 'h:' .. holder))
  if previous ~= nil then
    redis.call('HDEL', key, 'h:' .. holder, 'e:' .. holder)
    held = math.max(0, held - previous)
    tokens = tokens + math.max(0, math.min(refund, previous))
    if held == 0 then
      nexp = 0
    end
    dirty = true
  end
end

-- Tolerate float rounding: 0.1 + 0.2 tokens must pay for a cost of 0.3.
local EPSILON = 1e-9
local allowed = 0
local retry_ms = 0
local reserved = 0

if cost > burst then
  retry_ms = -1
elseif tokens + EPSILON >= cost then
  allowed = 1
  if cost > 0 then
    tokens = math.max(0, tokens - cost)
    dirty = true
    if holder ~= '' and want > 0 then
      reserved = math.min(want, math.floor(tokens - floor + EPSILON))
      if reserved >= 1 then
        local expires = now + hold_ms * 1000
        tokens = math.max(0, tokens - reserved)
        held = held + reserved
        redis.call('HSET', key, 'h:' .. holder, reserved, 'e:' .. holder, string.format('%.0f', expires))
        if nexp == 0 or expires < nexp then
          nexp = expires
        end
      else
        reserved = 0
      end
    end
  end
else
  -- Refused: the stored state still yields the same refill later (unless settled above).
  retry_ms = math.ceil((cost - tokens) * 1000 / rate)
  if retry_ms < 1 then
    retry_ms = 1
  end
end

if dirty then
  -- Lua would format numbers with %.14g, losing digits of a microsecond timestamp.
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.0f', now),
    'held', string.format('%.0f', held), 'nexp', string.format('%.0f', nexp))
  local ttl = ttl_ms
  if held > 0 then
    -- Never let the bucket expire before a reservation in it: a fresh full bucket beside a
    -- live reservation would hold more than the burst.
    ttl = math.max(ttl, redis.call('PTTL', key), hold_ms + 1000)
  end
  redis.call('PEXPIRE', key, ttl)
end
return {allowed, string.format('%.6f', tokens), retry_ms, reserved}

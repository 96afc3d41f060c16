"""Rate limits: a token bucket per (method group, caller), shared by all replicas through Redis.

`RateLimiter.check` takes `cost` tokens from the bucket of a group and key. With Redis
configured, one Lua script (token_bucket.lua, on the Redis clock) does that atomically, so
every replica draws from the same bucket. Without Redis, or while Redis is unreachable,
in-process `LocalBuckets` answer instead (fail open: each replica then grants its own
burst), except for the groups named fail-closed, which are refused with UNAVAILABLE. After a
failure Redis is tried again at most once per `probe_interval`, and used again as soon as a
probe succeeds.

Reservations (TALLY_RATE_LIMIT_BATCH > 0, the default; 0 is the per-call mode). Far from
the limit, a process takes more than a call's cost in one script call: up to B tokens,
B = min(TALLY_RATE_LIMIT_BATCH, floor(burst * TALLY_RATE_LIMIT_BATCH_FRACTION)), sized to
what this process spent on the bucket over one lease, and only while at least B tokens stay
in the bucket after it. Later checks on that bucket are served from the reservation without
a round trip, for at most TALLY_RATE_LIMIT_LEASE_SECONDS (on the local clock, counted from
before the request was sent). When it is spent, too small for a call, or its lease is over,
the next call settles it in the same script call that takes its cost: the unspent tokens go
back into the bucket, and a new reservation is taken if the bucket still has plenty. Near
the limit (fewer than cost + B + 1 tokens seen) every call is checked in Redis, exactly, and
refusals (with their Retry-After) are always computed there. One reserving call per bucket
is in flight per process; the others on that bucket wait for it and use its tokens.

The bound. Redis keeps `held` (the reserved tokens not yet settled) beside `tokens`, and
refills only up to burst - held, so tokens + held <= burst at all times; a token is admitted
only after Redis gave it out. Hence over any window of Redis time T, the admitted cost is at
most burst + rate * T, exactly as with a single bucket: reservations never let a client
exceed its limit. With P processes, at most P * B tokens are reserved and unspent at any
moment. A call is refused only when the bucket holds fewer than `cost` tokens outside
reservations, and this process then holds none (it settled in that call), so it is refused
at most (P - 1) * B tokens early; over a window of saturating demand, the admitted cost is at
least burst + rate * T - P * B - cost. A reservation that is never settled (its process
crashed, lost Redis or stopped calling on the key) expires in Redis
TALLY_RATE_LIMIT_LEASE_SECONDS + 1 s after it was taken, and its unspent tokens (at most B)
are then lost, never minted. `RateLimiter.settle()` returns all of them at shutdown.

`RateLimitInterceptor` applies the limiter to every RPC, keyed by principal, else by address:
the peer's, or the client the REST gateway forwarded with its proof (core.forwarding), never
one a caller names itself. It runs inside the wrapped
behaviour, at call time, because the principal it keys on is set by an outer interceptor's
wrapped behaviour. It raises core.errors exceptions, so it must sit inside
ErrorMappingInterceptor, which turns them into RESOURCE_EXHAUSTED (with RetryInfo and
QuotaFailure) or UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import grpc
import redis.asyncio
from redis.exceptions import NoScriptError, RedisError

from core import errors
from core.forwarding import FORWARDED_FOR, GATEWAY_PROOF, GatewayProof, parse_address
from core.principal import current_principal
from core.settings import RateLimit
from interceptors.peer import IpAddress, parse_peer
from interceptors.pipeline import Pipeline

log = logging.getLogger("tally.rate_limit")

DEFAULT_KEY_PREFIX = "tally:rl"
# RetryInfo for a call whose cost exceeds the burst: retrying cannot help, so say "much later".
NEVER_RETRY_AFTER = 24 * 3600.0
_EPSILON = 1e-9  # float rounding: 0.1 + 0.2 tokens pay for a cost of 0.3
_MAX_TTL_MS = 366 * 24 * 3600 * 1000
# A reservation's expiry in Redis is its local lease plus this: the holder stops spending it
# (on its own clock, started before the request was sent) well before Redis forgets it.
DEFAULT_HOLD_GRACE = 1.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of taking tokens from a bucket.

    `remaining` is the tokens left after this call (fractional: buckets refill continuously).
    `retry_after` is 0 when allowed, else the seconds until `cost` tokens are there, and
    `math.inf` when the cost exceeds the burst, so that waiting can never help.
    """

    allowed: bool
    remaining: float
    retry_after: float

    @property
    def never(self) -> bool:
        """True when the call costs more than the bucket can ever hold."""
        return math.isinf(self.retry_after)


def _check_cost(cost: int) -> None:
    if cost < 0:
        raise ValueError(f"cost must be 0 (only look) or more, got {cost}")


class LocalBuckets:
    """In-process token buckets with the same arithmetic as token_bucket.lua.

    `clock` returns monotonic seconds (injectable, so tests move time instead of sleeping).
    At most `max_keys` buckets are kept; beyond that the least recently used is forgotten,
    which only hands its caller a full bucket again.
    """

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self._max_keys = max_keys
        self._clock = clock
        # (group, key) -> (tokens, monotonic time they were counted at)
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, group: str, key: str, limit: RateLimit, cost: int) -> Decision:
        _check_cost(cost)
        now = self._clock()
        slot = (group, key)
        stored = self._buckets.get(slot)
        if stored is None:
            tokens = float(limit.burst)
        else:
            self._buckets.move_to_end(slot)
            tokens, stamp = stored
            # A clock that went backwards adds nothing rather than taking tokens away.
            tokens = min(float(limit.burst), tokens + max(0.0, now - stamp) * limit.rate)
        if cost > limit.burst:
            return Decision(allowed=False, remaining=tokens, retry_after=math.inf)
        if tokens + _EPSILON >= cost:
            if cost > 0:
                tokens = max(0.0, tokens - cost)
                self._buckets[slot] = (tokens, now)
                if len(self._buckets) > self._max_keys:
                    self._buckets.popitem(last=False)
            return Decision(allowed=True, remaining=tokens, retry_after=0.0)
        return Decision(allowed=False, remaining=tokens, retry_after=(cost - tokens) / limit.rate)


@functools.cache
def _script_source() -> str:
    return resources.files("interceptors").joinpath("token_bucket.lua").read_text(encoding="utf-8")


def bucket_ttl_ms(limit: RateLimit) -> int:
    """How long an idle bucket lives: twice the time it takes to refill from empty."""
    refill_ms = math.ceil(limit.burst / limit.rate * 1000)
    return min(_MAX_TTL_MS, max(1000, 2 * refill_ms))


class RedisBuckets:
    """Token buckets in Redis under `{prefix}:{group}:{key}`, taken with one atomic script.

    The script runs by EVALSHA; on NOSCRIPT (first use, a restarted or flushed Redis) it is
    sent once by EVAL, which also caches it on the server for the next EVALSHA. `calls`
    counts the script's round trips (EVALSHA and EVAL alike) made by this object.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._script = _script_source()
        self._sha = hashlib.sha1(self._script.encode(), usedforsecurity=False).hexdigest()
        self.calls = 0

    def key(self, group: str, key: str) -> str:
        return f"{self._prefix}:{group}:{key}"

    async def take(self, group: str, key: str, limit: RateLimit, cost: int) -> Decision:
        """Take `cost` tokens, exactly, in one round trip (no reservation)."""
        decision, _ = await self.take_and_reserve(group, key, limit, cost)
        return decision

    async def take_and_reserve(
        self,
        group: str,
        key: str,
        limit: RateLimit,
        cost: int,
        *,
        holder: str = "",
        refund: int = 0,
        want: int = 0,
        hold_ms: int = 0,
        floor: int = 0,
    ) -> tuple[Decision, int]:
        """Take `cost` tokens; for `holder`, first settle its previous reservation (returning
        `refund` unspent tokens), then, if the cost was taken and more than `floor` tokens are
        left, reserve up to `want` more for `hold_ms` milliseconds.

        Returns the decision (`remaining`: tokens in the bucket outside reservations) and the
        number of tokens reserved (0 without `holder`, or when the bucket is near its floor).
        """
        _check_cost(cost)
        name = self.key(group, key)
        ttl_ms = bucket_ttl_ms(limit)
        args = (repr(float(limit.rate)), limit.burst, cost, ttl_ms, holder, refund, want, hold_ms, floor)
        self.calls += 1
        try:
            reply: Any = await self._redis.evalsha(self._sha, 1, name, *args)
        except NoScriptError:
            self.calls += 1
            reply = await self._redis.eval(self._script, 1, name, *args)
        allowed, remaining, retry_ms = int(reply[0]), float(reply[1]), int(reply[2])
        reserved = int(reply[3]) if len(reply) > 3 else 0
        if retry_ms < 0:
            return Decision(allowed=False, remaining=remaining, retry_after=math.inf), 0
        return Decision(allowed=allowed == 1, remaining=remaining, retry_after=retry_ms / 1000), reserved


async def _bounded(call: Coroutine[Any, Any, _T], within: float) -> _T:
    """Await `call` for at most `within` seconds, then raise TimeoutError.

    Unlike `asyncio.timeout`, this returns on time even if the call swallows its
    cancellation (as `asyncio.wait_for` inside redis-py can on Python 3.11, when a write
    finishes just as the deadline fires): the call runs in its own task, which is cancelled
    and left to finish on its own.
    """
    task = asyncio.create_task(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=within)
    except BaseException:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise TimeoutError(f"no answer within {within}s")
    return task.result()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Collect an abandoned task's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _call_hook(hook: Callable[..., None] | None, *args: object) -> None:
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        log.exception("rate limit hook %r failed", hook)


@dataclass(slots=True)
class _Hold:
    """Tokens this process reserved in Redis for one bucket, spent here without a round trip."""

    left: int  # not spent yet
    granted: int
    since: float  # local clock, read before the request that reserved them was sent
    until: float  # end of the lease on the local clock: nothing is spent from it after that
    remaining: float  # tokens the bucket held outside reservations when they were granted


@dataclass(slots=True)
class _Slot:
    """What this process knows of one bucket when it reserves tokens from it."""

    hold: _Hold | None = None
    settling: asyncio.Future[None] | None = None  # a reserving or settling call in flight
    want: int = 0  # size of the next reservation (0: not adapted yet)
    seen: float = math.inf  # tokens outside reservations at the last answer (inf: never asked)
    seen_at: float = 0.0


# The first reservation of a bucket: small, until this process's rate on it is known.
_FIRST_WANT = 8


class RateLimiter:
    """Token buckets per (group, key): in Redis when given one, else (or while it is down) local.

    `limits` maps a group to its RateLimit and must hold "default", used for groups not
    listed. Redis calls are bounded by `redis_timeout` seconds. When one fails (connection
    error, timeout, error reply), the limiter logs one warning, calls `on_redis_down()`, and
    answers from `local` — except for groups in `fail_closed_groups`, refused with
    core.errors.Unavailable (reason RATE_LIMITER_UNAVAILABLE). From then on Redis is probed
    by at most one call per `probe_interval` seconds of `clock`; the first that succeeds
    logs, calls `on_redis_up()` and makes Redis the source again. `on_reject(group,
    decision)` is called for every refused check, `on_redis_call()` for every script call.

    Reservations (`batch` > 0, with Redis): see the module docstring. A group's batch is
    `min(batch, floor(burst * batch_fraction))` tokens at most (0: that group is checked per
    call); a reservation is spent for at most `lease` seconds, and Redis forgets an unsettled
    one `hold_grace` seconds after that. `batch=0` is the per-call mode: one script call per
    check, as before reservations existed.
    """

    def __init__(
        self,
        limits: Mapping[str, RateLimit],
        redis: redis.asyncio.Redis | None,
        fail_closed_groups: Iterable[str] = (),
        *,
        on_reject: Callable[[str, Decision], None] | None = None,
        on_redis_down: Callable[[], None] | None = None,
        on_redis_up: Callable[[], None] | None = None,
        on_redis_call: Callable[[], None] | None = None,
        local: LocalBuckets | None = None,
        redis_timeout: float = 0.1,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        batch: int = 0,
        batch_fraction: float = 0.1,
        lease: float = 0.5,
        hold_grace: float = DEFAULT_HOLD_GRACE,
        max_slots: int = 100_000,
    ) -> None:
        if "default" not in limits:
            raise ValueError('rate limits need a "default" entry')
        if not 0 < redis_timeout <= 5:
            raise ValueError(f"redis_timeout must be in (0, 5] seconds, got {redis_timeout}")
        if probe_interval < 0:
            raise ValueError(f"probe_interval must be 0 or more, got {probe_interval}")
        if batch < 0:
            raise ValueError(f"batch must be 0 (check every call in Redis) or more, got {batch}")
        if not 0 < batch_fraction <= 0.5:
            raise ValueError(f"batch_fraction must be in (0, 0.5], got {batch_fraction}")
        if not 0 < lease <= 60:
            raise ValueError(f"lease must be in (0, 60] seconds, got {lease}")
        if hold_grace < 0:
            raise ValueError(f"hold_grace must be 0 or more, got {hold_grace}")
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        self._limits = dict(limits)
        self._remote = RedisBuckets(redis, prefix=key_prefix) if redis is not None else None
        self._fail_closed = frozenset(fail_closed_groups)
        self._on_reject = on_reject
        self._on_redis_down = on_redis_down
        self._on_redis_up = on_redis_up
        self._on_redis_call = on_redis_call
        self._local = local if local is not None else LocalBuckets()
        self._redis_timeout = redis_timeout
        self._probe_interval = probe_interval
        self._clock = clock
        self._redis_up = True
        self._down_since = 0.0
        self._next_probe = 0.0
        self._batch = batch
        self._batch_fraction = batch_fraction
        self._lease = lease
        self._hold_ms = math.ceil((lease + hold_grace) * 1000)
        self._max_slots = max_slots
        self._slots: OrderedDict[tuple[str, str], _Slot] = OrderedDict()
        # Names this process's reservations in Redis; unique per limiter, so per process.
        self.holder = uuid.uuid4().hex[:16]

    @property
    def uses_redis(self) -> bool:
        """True when Redis is configured and not in an outage (the buckets are shared)."""
        return self._remote is not None and self._redis_up

    @property
    def redis_calls(self) -> int:
        """Script round trips to Redis made so far by this limiter (0 without Redis)."""
        return self._remote.calls if self._remote is not None else 0

    def limit_for(self, group: str) -> RateLimit:
        return self._limits.get(group, self._limits["default"])

    def batch_for(self, limit: RateLimit) -> int:
        """The most tokens one reservation may hold for a bucket of `limit` (0: per-call checks)."""
        return min(self._batch, math.floor(limit.burst * self._batch_fraction))

    def held(self, group: str, key: str) -> int:
        """Tokens this process holds unspent for `group` and `key` (0 if its lease has ended)."""
        slot = self._slots.get((group, key))
        hold = slot.hold if slot is not None else None
        if hold is None or self._clock() >= hold.until:
            return 0
        return hold.left

    async def check(self, group: str, key: str, cost: int) -> Decision:
        """Take `cost` tokens from the bucket of `group` and `key` (cost 0: only look)."""
        limit = self.limit_for(group)
        decision = await self._take(group, key, limit, cost)
        if not decision.allowed:
            _call_hook(self._on_reject, group, decision)
        return decision

    async def settle(self) -> None:
        """Return every reservation's unspent tokens to Redis (at shutdown; best effort)."""
        remote = self._remote
        if remote is None:
            return
        for (group, key), slot in list(self._slots.items()):
            hold, slot.hold = slot.hold, None
            if hold is None or slot.settling is not None:
                continue
            call = remote.take_and_reserve(
                group, key, self.limit_for(group), 0, holder=self.holder, refund=hold.left
            )
            try:
                _call_hook(self._on_redis_call)
                await _bounded(call, self._redis_timeout)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("could not return reserved rate limit tokens to Redis: %r", exc)
                return

    async def _take(self, group: str, key: str, limit: RateLimit, cost: int) -> Decision:
        remote = self._remote
        if remote is None:
            return self._local.take(group, key, limit, cost)
        batch = self.batch_for(limit) if cost > 0 else 0
        if batch > 0:
            return await self._take_batched(remote, group, key, limit, cost, batch)
        answer = await self._ask(remote.take_and_reserve(group, key, limit, cost))
        if answer is None:
            return self._fallback(group, key, limit, cost)
        return answer[0]

    async def _take_batched(
        self, remote: RedisBuckets, group: str, key: str, limit: RateLimit, cost: int, batch: int
    ) -> Decision:
        name = (group, key)
        while True:
            slot = self._slot(name)
            hold = slot.hold
            if hold is not None and hold.left >= cost and self._clock() < hold.until:
                hold.left -= cost
                return Decision(allowed=True, remaining=hold.remaining + hold.left, retry_after=0.0)
            if slot.settling is None:
                break
            # One reserving call per bucket at a time: wait for it, then try its tokens.
            await asyncio.wait((slot.settling,))
        now = self._clock()
        # Reserve only far from the limit: at least a batch must stay in the bucket after it.
        plenty = slot.seen + max(0.0, now - slot.seen_at) * limit.rate >= cost + batch + 1
        if not plenty and hold is None:
            # Near the limit: an exact check per call, and calls may overlap.
            answer = await self._ask(remote.take_and_reserve(group, key, limit, cost))
            if answer is None:
                return self._fallback(group, key, limit, cost)
            slot.seen, slot.seen_at = answer[0].remaining, now
            return answer[0]
        refund = 0
        if hold is not None:
            # Settle the old reservation in the same call; size the next one to this process's
            # rate on the bucket: what it spent over the lease, at most `batch`.
            slot.hold = None
            # Unspent tokens are final once the lease is over (nothing is spent after it), and
            # Redis returns none of a reservation it already let expire.
            refund = hold.left
            spent = hold.granted - hold.left
            per_lease = spent / max(now - hold.since, 1e-3) * self._lease
            slot.want = max(1, min(batch, math.ceil(per_lease)))
        want = (slot.want or min(batch, _FIRST_WANT)) if plenty else 0
        settling: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.settling = settling
        try:
            answer = await self._ask(
                remote.take_and_reserve(
                    group,
                    key,
                    limit,
                    cost,
                    holder=self.holder,
                    refund=refund,
                    want=want,
                    hold_ms=self._hold_ms,
                    floor=batch,
                )
            )
        finally:
            slot.settling = None
            settling.set_result(None)
        if answer is None:
            return self._fallback(group, key, limit, cost)
        decision, reserved = answer
        slot.seen, slot.seen_at = decision.remaining, now
        if reserved > 0:
            slot.hold = _Hold(
                left=reserved,
                granted=reserved,
                since=now,
                until=now + self._lease,
                remaining=decision.remaining,
            )
            decision = Decision(allowed=True, remaining=decision.remaining + reserved, retry_after=0.0)
        return decision

    def _slot(self, name: tuple[str, str]) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            slot = self._slots[name] = _Slot()
            if len(self._slots) > self._max_slots:
                # Forgetting a bucket forgets its reservation: Redis lets it expire, unspent.
                self._slots.popitem(last=False)
        else:
            self._slots.move_to_end(name)
        return slot

    async def _ask(self, call: Coroutine[Any, Any, tuple[Decision, int]]) -> tuple[Decision, int] | None:
        """Redis's answer to `call`, or None when Redis is down (not probed now) or fails."""
        probing = not self._redis_up
        if probing:
            now = self._clock()
            if now < self._next_probe:
                call.close()
                return None
            # This call is the probe; the others stay local until it is answered or the next interval.
            self._next_probe = now + self._probe_interval
        _call_hook(self._on_redis_call)
        try:
            answer = await _bounded(call, self._redis_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return None
        if probing and not self._redis_up:
            self._mark_up()
        return answer

    def _fallback(self, group: str, key: str, limit: RateLimit, cost: int) -> Decision:
        if group in self._fail_closed:
            raise errors.Unavailable(
                f"the rate limiter for {group} is unavailable; retry shortly",
                reason="RATE_LIMITER_UNAVAILABLE",
            )
        return self._local.take(group, key, limit, cost)

    def _mark_down(self, exc: BaseException) -> None:
        now = self._clock()
        self._next_probe = now + self._probe_interval
        if not self._redis_up:
            return
        self._redis_up = False
        self._down_since = now
        closed = ", ".join(sorted(self._fail_closed)) or "none"
        log.warning(
            "Redis for rate limits failed (%s); serving from in-process buckets until it answers "
            "again (fail-closed groups refused: %s)",
            exc.__class__.__name__ if not str(exc) else f"{exc.__class__.__name__}: {exc}",
            closed,
        )
        _call_hook(self._on_redis_down)

    def _mark_up(self) -> None:
        self._redis_up = True
        log.info(
            "Redis for rate limits answers again after %.1fs; buckets are shared again",
            self._clock() - self._down_since,
        )
        _call_hook(self._on_redis_up)


def address_key(address: IpAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def client_key(peer: str, forwarded_for: str | None, proof: str | None, gateway: GatewayProof | None) -> str:
    """The key of an anonymous caller: its address, or the client address the gateway forwarded
    when the call carries the gateway's proof for it (core.forwarding). An address proves nothing:
    any process on the gateway's host shares its loopback address."""
    if gateway is not None and forwarded_for and proof and gateway.verifies(forwarded_for, proof):
        address = parse_address(forwarded_for)
        if address is not None:
            return address_key(address)
    return peer_key(peer)


def peer_key(peer: str) -> str:
    """The caller's address from `context.peer()`, for keying buckets.

    "ipv4:203.0.113.7:5555" -> "203.0.113.7"; IPv6 is keyed by its /64, which is what one
    client usually holds ("ipv6:[2001:db8::1]:5555" -> "2001:db8::/64"); an IPv4-mapped
    IPv6 address counts as IPv4; every Unix-socket caller shares "unix"; anything
    unparsable is "unknown". Percent-encoded peers (newer gRPC cores) are decoded.
    """
    parsed = parse_peer(peer)
    if parsed.kind == "unix":
        return "unix"
    address = parsed.ip()
    return address_key(address) if address is not None else "unknown"


def describe_limit(limit: RateLimit) -> str:
    rate = f"{limit.rate:.6f}".rstrip("0").rstrip(".")
    return f"{rate} requests/s, burst {limit.burst}"


def method_groups(
    rules: Mapping[str, tuple[str, int]], default: tuple[str, int] = ("default", 1)
) -> Callable[[str], tuple[str, int]]:
    """A `group_for` from rules keyed by full method ("/pkg.Service/Method") or service prefix
    ("/pkg.Service/"); the exact method wins over its service. Cost 0 exempts a method."""
    exact = {name: rule for name, rule in rules.items() if not name.endswith("/")}
    services = {name: rule for name, rule in rules.items() if name.endswith("/")}

    def group_for(full_method: str) -> tuple[str, int]:
        rule = exact.get(full_method)
        if rule is None:
            rule = services.get(full_method[: full_method.rfind("/") + 1], default)
        return rule

    return group_for


class RateLimitStage:
    """What interceptors.pipeline calls: a method's (group, cost) once, then per call `charge`.

    Keyed by principal subject, else by peer address (or the client the gateway forwarded,
    proven with `gateway_proof`). `group_for(full_method)` gives the call's (group, cost); a
    cost of 0 exempts the method (health checks, reflection). The cost is charged once per
    call, streams included.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        group_for: Callable[[str], tuple[str, int]],
        *,
        gateway_proof: GatewayProof | None = None,
    ) -> None:
        self._limiter = limiter
        self._group_for = group_for
        self._gateway_proof = gateway_proof

    def for_method(self, full_method: str) -> tuple[str, int] | None:
        """(group, cost) of a method; None when it is exempt."""
        group, cost = self._group_for(full_method)
        return (group, cost) if cost > 0 else None

    async def charge(
        self, rate: tuple[str, int], context: grpc.aio.ServicerContext, metadata: Mapping[str, str]
    ) -> None:
        """Take the call's tokens, or raise ResourceExhausted (or Unavailable, fail-closed groups)."""
        group, cost = rate
        principal = current_principal()
        if principal is not None:
            key, kind = principal.subject, "principal"
        else:
            key = "peer:" + client_key(
                context.peer(),
                metadata.get(FORWARDED_FOR),
                metadata.get(GATEWAY_PROOF),
                self._gateway_proof,
            )
            kind = "peer"
        decision = await self._limiter.check(group, key, cost)
        if decision.allowed:
            return
        limit = self._limiter.limit_for(group)
        if decision.never:
            raise errors.ResourceExhausted(
                f"this call costs {cost} tokens, more than the {group} rate limit bucket holds "
                f"(burst {limit.burst}); it cannot succeed under the current limit",
                retry_after=NEVER_RETRY_AFTER,
                subject=f"{group}:{kind}",
                limit_description=describe_limit(limit),
                reason="COST_EXCEEDS_BURST",
            )
        raise rate_limit_exceeded(group, kind, decision.retry_after, limit)


def rate_limit_exceeded(
    group: str, kind: str, retry_after: float, limit: RateLimit
) -> errors.ResourceExhausted:
    """The error of a call refused by `group`'s bucket for a caller of `kind` (principal, peer,
    address): retry after `retry_after` seconds."""
    return errors.ResourceExhausted(
        f"rate limit for {group} exceeded; retry in {retry_after:.3f}s",
        retry_after=retry_after,
        subject=f"{group}:{kind}",
        limit_description=describe_limit(limit),
    )


class RateLimitInterceptor(Pipeline):
    """The rate-limit stage alone, as an interceptor. It runs inside the wrapped behaviour, at call
    time, because the principal it keys on is set by the auth stage outside it; it raises
    core.errors exceptions, so it must sit inside the error mapping."""

    def __init__(
        self,
        limiter: RateLimiter,
        group_for: Callable[[str], tuple[str, int]],
        *,
        gateway_proof: GatewayProof | None = None,
    ) -> None:
        super().__init__(rate_limit=RateLimitStage(limiter, group_for, gateway_proof=gateway_proof))

"""Rate limits: a token bucket per (method group, caller), shared by all replicas through Redis.

`RateLimiter.check` takes `cost` tokens from the bucket of a group and key. With Redis
configured, one Lua script (token_bucket.lua, on the Redis clock) does that atomically, so
every replica draws from the same bucket. Without Redis, or while Redis is unreachable,
in-process `LocalBuckets` answer instead (fail open: each replica then grants its own
burst), except for the groups named fail-closed, which are refused with UNAVAILABLE. After a
failure Redis is tried again at most once per `probe_interval`, and used again as soon as a
probe succeeds.

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
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

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
    sent once by EVAL, which also caches it on the server for the next EVALSHA.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._script = _script_source()
        self._sha = hashlib.sha1(self._script.encode(), usedforsecurity=False).hexdigest()

    def key(self, group: str, key: str) -> str:
        return f"{self._prefix}:{group}:{key}"

    async def take(self, group: str, key: str, limit: RateLimit, cost: int) -> Decision:
        _check_cost(cost)
        name = self.key(group, key)
        args = (repr(float(limit.rate)), limit.burst, cost, bucket_ttl_ms(limit))
        try:
            reply: Any = await self._redis.evalsha(self._sha, 1, name, *args)
        except NoScriptError:
            reply = await self._redis.eval(self._script, 1, name, *args)
        allowed, remaining, retry_ms = int(reply[0]), float(reply[1]), int(reply[2])
        if retry_ms < 0:
            return Decision(allowed=False, remaining=remaining, retry_after=math.inf)
        return Decision(allowed=allowed == 1, remaining=remaining, retry_after=retry_ms / 1000)


async def _bounded(call: Coroutine[Any, Any, Decision], within: float) -> Decision:
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


class RateLimiter:
    """Token buckets per (group, key): in Redis when given one, else (or while it is down) local.

    `limits` maps a group to its RateLimit and must hold "default", used for groups not
    listed. Redis calls are bounded by `redis_timeout` seconds. When one fails (connection
    error, timeout, error reply), the limiter logs one warning, calls `on_redis_down()`, and
    answers from `local` — except for groups in `fail_closed_groups`, refused with
    core.errors.Unavailable (reason RATE_LIMITER_UNAVAILABLE). From then on Redis is probed
    by at most one call per `probe_interval` seconds of `clock`; the first that succeeds
    logs, calls `on_redis_up()` and makes Redis the source again. `on_reject(group,
    decision)` is called for every refused check.
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
        local: LocalBuckets | None = None,
        redis_timeout: float = 0.1,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        key_prefix: str = DEFAULT_KEY_PREFIX,
    ) -> None:
        if "default" not in limits:
            raise ValueError('rate limits need a "default" entry')
        if not 0 < redis_timeout <= 5:
            raise ValueError(f"redis_timeout must be in (0, 5] seconds, got {redis_timeout}")
        if probe_interval < 0:
            raise ValueError(f"probe_interval must be 0 or more, got {probe_interval}")
        self._limits = dict(limits)
        self._remote = RedisBuckets(redis, prefix=key_prefix) if redis is not None else None
        self._fail_closed = frozenset(fail_closed_groups)
        self._on_reject = on_reject
        self._on_redis_down = on_redis_down
        self._on_redis_up = on_redis_up
        self._local = local if local is not None else LocalBuckets()
        self._redis_timeout = redis_timeout
        self._probe_interval = probe_interval
        self._clock = clock
        self._redis_up = True
        self._down_since = 0.0
        self._next_probe = 0.0

    @property
    def uses_redis(self) -> bool:
        """True when Redis is configured and not in an outage (the buckets are shared)."""
        return self._remote is not None and self._redis_up

    def limit_for(self, group: str) -> RateLimit:
        return self._limits.get(group, self._limits["default"])

    async def check(self, group: str, key: str, cost: int) -> Decision:
        """Take `cost` tokens from the bucket of `group` and `key` (cost 0: only look)."""
        limit = self.limit_for(group)
        decision = await self._take(group, key, limit, cost)
        if not decision.allowed:
            _call_hook(self._on_reject, group, decision)
        return decision

    async def _take(self, group: str, key: str, limit: RateLimit, cost: int) -> Decision:
        if self._remote is None:
            return self._local.take(group, key, limit, cost)
        probing = not self._redis_up
        if probing:
            now = self._clock()
            if now < self._next_probe:
                return self._fallback(group, key, limit, cost)
            # This call is the probe; the others stay local until it is answered or the next interval.
            self._next_probe = now + self._probe_interval
        try:
            decision = await _bounded(self._remote.take(group, key, limit, cost), self._redis_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return self._fallback(group, key, limit, cost)
        if probing and not self._redis_up:
            self._mark_up()
        return decision

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
        raise errors.ResourceExhausted(
            f"rate limit for {group} exceeded; retry in {decision.retry_after:.3f}s",
            retry_after=decision.retry_after,
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

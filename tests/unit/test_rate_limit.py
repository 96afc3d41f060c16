"""Token-bucket arithmetic of the in-process buckets on an injected clock, and the Redis call bound."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from core.forwarding import GatewayProof
from core.settings import RateLimit
from interceptors.rate_limit import (
    Decision,
    LocalBuckets,
    RateLimiter,
    _bounded,
    bucket_ttl_ms,
    describe_limit,
    method_groups,
    peer_key,
)
from tests.support import FakeMonotonic


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def buckets(clock: FakeMonotonic) -> LocalBuckets:
    return LocalBuckets(clock=clock)


LIMIT = RateLimit(rate=2, burst=5)


def test_burst_is_cut_at_the_configured_size(buckets: LocalBuckets) -> None:
    decisions = [buckets.take("g", "k", LIMIT, 1) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[5].retry_after == pytest.approx(1 / LIMIT.rate)
    assert not decisions[5].never


def test_tokens_refill_with_time(buckets: LocalBuckets, clock: FakeMonotonic) -> None:
    for _ in range(5):
        assert buckets.take("g", "k", LIMIT, 1).allowed
    clock.advance(0.25)  # half a token
    refused = buckets.take("g", "k", LIMIT, 1)
    assert not refused.allowed
    assert refused.remaining == pytest.approx(0.5)
    assert refused.retry_after == pytest.approx(0.25)
    clock.advance(refused.retry_after)
    allowed = buckets.take("g", "k", LIMIT, 1)
    assert allowed.allowed
    assert allowed.remaining == pytest.approx(0)


def test_refill_stops_at_the_burst(buckets: LocalBuckets, clock: FakeMonotonic) -> None:
    buckets.take("g", "k", LIMIT, 5)
    clock.advance(3600)
    assert buckets.take("g", "k", LIMIT, 1).remaining == 4


def test_refills_of_exactly_one_token_are_not_lost_to_float_rounding(
    buckets: LocalBuckets, clock: FakeMonotonic
) -> None:
    limit = RateLimit(rate=3, burst=1)
    assert buckets.take("g", "k", limit, 1).allowed
    for _ in range(100):
        clock.advance(1 / 3)  # (t + 1/3 - t) * 3 is often 0.9999999999999 in floats
        assert buckets.take("g", "k", limit, 1).allowed


def test_cost_above_one_takes_that_many_tokens(buckets: LocalBuckets) -> None:
    first = buckets.take("g", "k", LIMIT, 3)
    assert (first.allowed, first.remaining) == (True, 2)
    second = buckets.take("g", "k", LIMIT, 3)
    assert not second.allowed
    assert second.retry_after == pytest.approx((3 - 2) / LIMIT.rate)
    assert buckets.take("g", "k", LIMIT, 2).allowed


def test_cost_above_the_burst_can_never_succeed(buckets: LocalBuckets, clock: FakeMonotonic) -> None:
    decision = buckets.take("g", "k", LIMIT, 6)
    assert not decision.allowed
    assert decision.never
    assert decision.retry_after == math.inf
    clock.advance(10_000)
    assert buckets.take("g", "k", LIMIT, 6).never
    # Nothing was taken by the refused calls.
    assert buckets.take("g", "k", LIMIT, 5).allowed


def test_cost_zero_only_looks(buckets: LocalBuckets) -> None:
    assert buckets.take("g", "k", LIMIT, 0) == Decision(allowed=True, remaining=5, retry_after=0)
    assert len(buckets) == 0
    buckets.take("g", "k", LIMIT, 2)
    assert buckets.take("g", "k", LIMIT, 0).remaining == 3


def test_negative_cost_is_a_bug(buckets: LocalBuckets) -> None:
    with pytest.raises(ValueError, match="cost"):
        buckets.take("g", "k", LIMIT, -1)


def test_fractional_rate(buckets: LocalBuckets, clock: FakeMonotonic) -> None:
    limit = RateLimit(rate=0.5, burst=1)
    assert buckets.take("g", "k", limit, 1).allowed
    refused = buckets.take("g", "k", limit, 1)
    assert refused.retry_after == pytest.approx(2.0)
    clock.advance(1.999)
    assert not buckets.take("g", "k", limit, 1).allowed
    clock.advance(0.001)
    assert buckets.take("g", "k", limit, 1).allowed


def test_a_clock_going_backwards_mints_no_tokens(buckets: LocalBuckets, clock: FakeMonotonic) -> None:
    buckets.take("g", "k", LIMIT, 5)
    clock.advance(-100)
    refused = buckets.take("g", "k", LIMIT, 1)
    assert (refused.allowed, refused.remaining) == (False, 0)


def test_buckets_are_separate_per_group_and_key(buckets: LocalBuckets) -> None:
    buckets.take("g", "a", LIMIT, 5)
    assert not buckets.take("g", "a", LIMIT, 1).allowed
    assert buckets.take("g", "b", LIMIT, 1).allowed
    assert buckets.take("h", "a", LIMIT, 1).allowed


def test_memory_is_bounded_least_recently_used_goes_first(clock: FakeMonotonic) -> None:
    buckets = LocalBuckets(max_keys=2, clock=clock)
    buckets.take("g", "a", LIMIT, 5)
    buckets.take("g", "b", LIMIT, 5)
    buckets.take("g", "a", LIMIT, 0)  # a is now the most recently used
    buckets.take("g", "c", LIMIT, 1)
    assert len(buckets) == 2
    assert buckets.take("g", "a", LIMIT, 0).remaining == 0  # kept
    assert buckets.take("g", "b", LIMIT, 0).remaining == 5  # forgotten: a full bucket again


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        LocalBuckets(max_keys=0)


def test_bucket_ttl_is_twice_the_full_refill_time() -> None:
    assert bucket_ttl_ms(RateLimit(rate=2, burst=5)) == 5000
    assert bucket_ttl_ms(RateLimit(rate=1000, burst=3)) == 1000  # never under a second
    assert bucket_ttl_ms(RateLimit(rate=0.01, burst=5)) == 1_000_000


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv4:203.0.113.7:1", "203.0.113.7"),
        ("ipv6:[::1]:5555", "::/64"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8::1%5D:443", "2001:db8::/64"),
        ("ipv6:[::ffff:192.0.2.1]:80", "192.0.2.1"),
        ("ipv6:[fe80::1%25eth0]:80", "fe80::/64"),
        ("unix:/run/tally.sock", "unix"),
        ("unix-abstract:tally", "unix"),
        ("ipv4:not-an-address:1", "unknown"),
        ("ipv6:[::1", "unknown"),
        ("", "unknown"),
        ("vsock:3:1", "unknown"),
    ],
)
def test_peer_key(peer: str, key: str) -> None:
    assert peer_key(peer) == key


def test_describe_limit() -> None:
    assert describe_limit(RateLimit(rate=50, burst=100)) == "50 requests/s, burst 100"
    assert describe_limit(RateLimit(rate=0.5, burst=1)) == "0.5 requests/s, burst 1"


def test_method_groups() -> None:
    group_for = method_groups(
        {
            "/tally.auth.v1.AuthService/": ("auth", 1),
            "/tally.auth.v1.AuthService/Refresh": ("refresh", 2),
            "/grpc.health.v1.Health/": ("health", 0),
        }
    )
    assert group_for("/tally.auth.v1.AuthService/Login") == ("auth", 1)
    assert group_for("/tally.auth.v1.AuthService/Refresh") == ("refresh", 2)
    assert group_for("/grpc.health.v1.Health/Check") == ("health", 0)
    assert group_for("/tally.account.v1.AccountService/GetAccount") == ("default", 1)


async def test_limiter_without_redis_uses_local_buckets_and_the_default_group(clock: FakeMonotonic) -> None:
    rejected: list[tuple[str, Decision]] = []
    limiter = RateLimiter(
        {"default": RateLimit(rate=1, burst=2), "auth": RateLimit(rate=1, burst=1)},
        None,
        {"auth"},  # fail-closed only matters with Redis configured
        local=LocalBuckets(clock=clock),
        on_reject=lambda group, decision: rejected.append((group, decision)),
    )
    assert not limiter.uses_redis
    assert limiter.limit_for("unlisted") == RateLimit(rate=1, burst=2)
    assert [(await limiter.check("unlisted", "k", 1)).allowed for _ in range(3)] == [True, True, False]
    assert [(await limiter.check("auth", "k", 1)).allowed for _ in range(2)] == [True, False]
    assert [group for group, _ in rejected] == ["unlisted", "auth"]
    assert rejected[0][1].retry_after == pytest.approx(1.0)


def test_limiter_needs_a_default_group() -> None:
    with pytest.raises(ValueError, match="default"):
        RateLimiter({"auth": RateLimit(rate=1, burst=1)}, None, set())


def test_limiter_rejects_an_unbounded_redis_timeout() -> None:
    with pytest.raises(ValueError, match="redis_timeout"):
        RateLimiter({"default": RateLimit(rate=1, burst=1)}, None, set(), redis_timeout=0)


async def test_the_redis_bound_holds_even_if_the_call_swallows_its_cancellation() -> None:
    finished = asyncio.Event()

    async def stubborn() -> Decision:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # as asyncio.wait_for on Python 3.11 may: carries on
        finished.set()
        return Decision(allowed=True, remaining=0, retry_after=0)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await _bounded(stubborn(), 0.05)
    assert time.monotonic() - started < 0.2
    await asyncio.wait_for(finished.wait(), 5)  # and the abandoned call was let finish


async def test_the_redis_bound_passes_results_and_errors_through() -> None:
    async def answer() -> Decision:
        return Decision(allowed=False, remaining=1, retry_after=2)

    async def fail() -> Decision:
        raise OSError("refused")

    assert await _bounded(answer(), 1) == Decision(allowed=False, remaining=1, retry_after=2)
    with pytest.raises(OSError, match="refused"):
        await _bounded(fail(), 1)


_GATEWAY = GatewayProof(b"g" * 32)
_OTHER = GatewayProof(b"x" * 32)


@pytest.mark.parametrize(
    ("peer", "forwarded", "proof", "expected"),
    [
        # the gateway's proof: the forwarded client is believed, from any peer address
        ("ipv4:127.0.0.1:5000", "203.0.113.9", _GATEWAY.sign("203.0.113.9"), "203.0.113.9"),
        ("ipv4:198.51.100.4:5000", "203.0.113.9", _GATEWAY.sign("203.0.113.9"), "203.0.113.9"),
        ("ipv6:[::1]:5000", "2001:db8::7", _GATEWAY.sign("2001:db8::7"), "2001:db8::/64"),
        # no proof, a wrong one, another client's, another secret's: the peer is the key
        ("ipv4:127.0.0.1:5000", "203.0.113.9", None, "127.0.0.1"),
        ("ipv4:127.0.0.1:5000", "203.0.113.9", "0" * 64, "127.0.0.1"),
        ("ipv4:127.0.0.1:5000", "203.0.113.9", _GATEWAY.sign("203.0.113.8"), "127.0.0.1"),
        ("ipv4:127.0.0.1:5000", "203.0.113.9", _OTHER.sign("203.0.113.9"), "127.0.0.1"),
        ("ipv4:127.0.0.1:5000", "203.0.113.9", "", "127.0.0.1"),
        # proven, but no address
        ("ipv4:127.0.0.1:5000", "not-an-address", _GATEWAY.sign("not-an-address"), "127.0.0.1"),
        ("ipv4:127.0.0.1:5000", None, None, "127.0.0.1"),
    ],
)
def test_only_the_gateways_proof_lets_a_caller_name_the_client(
    peer: str, forwarded: str | None, proof: str | None, expected: str
) -> None:
    from interceptors.rate_limit import client_key

    assert client_key(peer, forwarded, proof, _GATEWAY) == expected


def test_without_a_gateway_proof_nothing_forwarded_is_believed() -> None:
    from interceptors.rate_limit import client_key

    assert client_key("ipv4:127.0.0.1:5000", "203.0.113.9", _GATEWAY.sign("203.0.113.9"), None) == "127.0.0.1"

"""Rate limits on real Redis (shared buckets, outages, recovery) and through a real gRPC server.

Shared-bucket tests use the Redis at TALLY_TEST_REDIS_URL (default redis://127.0.0.1:6379/15)
under a key prefix of their own, deleted afterwards. Outage tests start a private
`redis-server` on a spare loopback port, stop it mid-test and start it again. Waits are
polls with a deadline, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core import errors
from core.principal import Principal, Role, reset_principal, set_principal
from core.settings import RateLimit
from interceptors.errors import ErrorMappingInterceptor
from interceptors.rate_limit import (
    Decision,
    LocalBuckets,
    RateLimiter,
    RateLimitInterceptor,
    RedisBuckets,
    bucket_ttl_ms,
    method_groups,
)
from tests.support import REDIS_URL, FakeMonotonic, details, eventually, free_port, unavailable

SLOW = RateLimit(rate=0.01, burst=5)  # one token per 100 s: no refill during a test


def fast_client(port: int) -> Redis:
    """A client as the server should build one: short socket timeouts, one immediate retry."""
    return Redis(
        host="127.0.0.1",
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 1),
    )


async def stored_tokens(client: Redis, key: str) -> float:
    value = await client.hget(key, "tokens")
    assert value is not None, f"no bucket at {key}"
    return float(value)


def shared_limiter(client: Redis, prefix: str, limit: RateLimit) -> RateLimiter:
    """A limiter on the shared Redis that must never fall back to local buckets in a test."""

    def down() -> None:
        pytest.fail("the limiter fell back to local buckets")  # BaseException: not swallowed

    # A generous timeout: on a loaded machine 0.1 s can pass, and the fallback would skew counts.
    return RateLimiter(
        {"default": limit}, client, set(), key_prefix=prefix, redis_timeout=5, on_redis_down=down
    )


def redis_us(reply: Any) -> int:
    seconds, micros = reply
    return int(seconds) * 1_000_000 + int(micros)


# --- Redis fixtures ---------------------------------------------------------------------


@pytest.fixture
async def shared_redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        await asyncio.wait_for(client.ping(), 3)
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc!r}; set TALLY_TEST_REDIS_URL")
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def key_prefix(shared_redis: Redis) -> AsyncIterator[str]:
    prefix = f"tally:rl:test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        keys = [key async for key in shared_redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await shared_redis.delete(*keys)


class RedisProcess:
    """A private redis-server on a fixed loopback port that a test may stop and start again."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    async def wait_ready(self, within: float = 10.0) -> None:
        client = Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, socket_timeout=0.2)

        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"redis-server on port {self.port} exited with {self.process.returncode}")
            try:
                return bool(await client.ping())
            except (RedisError, OSError):
                return False

        try:
            await eventually(ready, within=within, what=f"redis-server on port {self.port}")
        finally:
            await client.aclose()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    server = RedisProcess(free_port(), tmp_path)
    try:
        server.start()
        await server.wait_ready()
        yield server
    finally:
        server.stop()


# --- Shared buckets on Redis ------------------------------------------------------------


@pytest.mark.redis
async def test_burst_is_cut_at_the_configured_size(shared_redis: Redis, key_prefix: str) -> None:
    limit = RateLimit(rate=1, burst=5)
    limiter = shared_limiter(shared_redis, key_prefix, limit)
    decisions = [await limiter.check("g", "k", 1) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    for expected, decision in zip([4, 3, 2, 1, 0], decisions, strict=False):
        assert decision.remaining == pytest.approx(expected, abs=0.2)
    assert decisions[5].retry_after == pytest.approx(1 / limit.rate, abs=0.2)
    assert 0 < decisions[5].retry_after <= 1 / limit.rate
    state = await shared_redis.hgetall(f"{key_prefix}:g:k")
    assert float(state[b"tokens"]) == pytest.approx(0, abs=0.2)
    assert 0 < await shared_redis.pttl(f"{key_prefix}:g:k") <= bucket_ttl_ms(limit)


@pytest.mark.redis
async def test_remaining_follows_the_refill_arithmetic(shared_redis: Redis, key_prefix: str) -> None:
    limit = RateLimit(rate=1000, burst=3)
    limiter = shared_limiter(shared_redis, key_prefix, limit)
    key = f"{key_prefix}:g:k"
    assert (await limiter.check("g", "k", 3)).allowed
    stored = await shared_redis.hgetall(key)
    tokens, stamp = float(stored[b"tokens"]), int(stored[b"ts"])

    # Bracket the script's own TIME between two readings of the Redis clock: the
    # remaining tokens must lie between the refill at either end.
    before = redis_us(await shared_redis.time())
    peek = await limiter.check("g", "k", 0)
    after = redis_us(await shared_redis.time())
    low = min(3.0, tokens + (before - stamp) * limit.rate / 1e6)
    high = min(3.0, tokens + (after - stamp) * limit.rate / 1e6)
    assert low - 1e-5 <= peek.remaining <= high + 1e-5
    assert peek.remaining > tokens  # it did refill

    async def full() -> bool:
        return (await limiter.check("g", "k", 0)).remaining == 3.0

    await eventually(full, within=5, what="the bucket to refill to its burst")


@pytest.mark.redis
async def test_a_refused_call_succeeds_after_retry_after(shared_redis: Redis, key_prefix: str) -> None:
    limit = RateLimit(rate=20, burst=2)
    limiter = shared_limiter(shared_redis, key_prefix, limit)
    while True:  # drain; note when the refused request was sent (before Redis decided)
        sent_at = time.monotonic()
        refused = await limiter.check("g", "k", 1)
        if not refused.allowed:
            break
    assert 0 < refused.retry_after <= 1 / limit.rate

    async def allowed() -> bool:
        return (await limiter.check("g", "k", 1)).allowed

    await eventually(allowed, within=5, what="a token to refill")
    # Time cannot run faster than the bucket said (allow a millisecond of clock rounding).
    assert time.monotonic() - sent_at >= refused.retry_after - 0.002


@pytest.mark.redis
async def test_cost_above_one(shared_redis: Redis, key_prefix: str) -> None:
    limiter = shared_limiter(shared_redis, key_prefix, SLOW)
    first = await limiter.check("g", "k", 3)
    assert first.allowed
    assert first.remaining == pytest.approx(2, abs=0.01)
    second = await limiter.check("g", "k", 3)
    assert not second.allowed
    assert second.retry_after == pytest.approx((3 - 2) / SLOW.rate, abs=1)
    assert (await limiter.check("g", "k", 2)).allowed


@pytest.mark.redis
async def test_cost_above_the_burst_is_never_allowed(shared_redis: Redis, key_prefix: str) -> None:
    limiter = shared_limiter(shared_redis, key_prefix, SLOW)
    decision = await limiter.check("g", "k", 6)
    assert not decision.allowed
    assert decision.never
    assert decision.remaining == 5
    assert await shared_redis.exists(f"{key_prefix}:g:k") == 0  # nothing taken, nothing stored
    assert (await limiter.check("g", "k", 5)).allowed


@pytest.mark.redis
async def test_two_replicas_share_one_bucket(shared_redis: Redis, key_prefix: str) -> None:
    # Two limiters on two clients (two connection pools), as two replicas would be.
    other = Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        replica_a = shared_limiter(shared_redis, key_prefix, SLOW)
        replica_b = shared_limiter(other, key_prefix, SLOW)
        turns = [replica_a, replica_b, replica_a, replica_b, replica_a]
        assert all([(await replica.check("g", "k", 1)).allowed for replica in turns])
        assert not (await replica_a.check("g", "k", 1)).allowed
        assert not (await replica_b.check("g", "k", 1)).allowed

        # Concurrent calls from both replicas on a fresh key: exactly the burst gets through.
        results = await asyncio.gather(
            *(replica.check("g", "race", 1) for replica in [replica_a, replica_b] * 10)
        )
        assert sum(decision.allowed for decision in results) == SLOW.burst
    finally:
        await other.aclose()


@pytest.mark.redis
async def test_groups_and_keys_have_their_own_buckets(shared_redis: Redis, key_prefix: str) -> None:
    limits = {"default": SLOW, "auth": RateLimit(rate=0.01, burst=1)}
    limiter = RateLimiter(limits, shared_redis, set(), key_prefix=key_prefix, redis_timeout=5)
    assert (await limiter.check("auth", "k", 1)).allowed
    assert not (await limiter.check("auth", "k", 1)).allowed
    assert (await limiter.check("auth", "other", 1)).allowed
    assert (await limiter.check("billing", "k", 1)).remaining == pytest.approx(4, abs=0.01)
    keys = {key async for key in shared_redis.scan_iter(match=f"{key_prefix}:*")}
    expected = {f"{key_prefix}:auth:k", f"{key_prefix}:auth:other", f"{key_prefix}:billing:k"}
    assert keys == {key.encode() for key in expected}


# --- Outages: fail open, fail closed, recovery --------------------------------------------


async def test_redis_outage_fails_open_then_recovers(
    private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tally.rate_limit")
    clock = FakeMonotonic()
    downs: list[int] = []
    ups: list[int] = []
    client = fast_client(private_redis.port)
    admin = fast_client(private_redis.port)
    limiter = RateLimiter(
        {"default": SLOW},
        client,
        {"closed"},
        on_redis_down=lambda: downs.append(1),
        on_redis_up=lambda: ups.append(1),
        clock=clock,
        local=LocalBuckets(clock=clock),
        redis_timeout=2,  # generous: only a loaded machine is slow, a stopped Redis refuses at once
        probe_interval=1.0,
    )
    key = RedisBuckets(client).key("open", "k")
    try:
        await admin.delete(key)
        first = await limiter.check("open", "k", 1)
        assert first.remaining == pytest.approx(4, abs=0.01)
        assert await stored_tokens(admin, key) == pytest.approx(4, abs=0.01)
        assert (await limiter.check("closed", "k", 1)).allowed
        assert limiter.uses_redis

        private_redis.stop()

        # Fail open: answered from a fresh local bucket (Redis would have said 3 left).
        started = time.monotonic()
        outage = [await limiter.check("open", "k", 1) for _ in range(3)]
        assert [d.remaining for d in outage] == [4, 3, 2]
        assert not limiter.uses_redis
        with pytest.raises(errors.Unavailable) as refused:
            await limiter.check("closed", "k", 1)
        assert refused.value.reason == "RATE_LIMITER_UNAVAILABLE"
        # Probes once a second still fail: no second "down", no second warning.
        for _ in range(3):
            clock.advance(1.5)
            assert (await limiter.check("open", "k", 1)).allowed is not None
        assert time.monotonic() - started < 5  # every Redis attempt was bounded
        assert downs == [1]
        assert ups == []
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "in-process buckets" in warnings[0].getMessage()

        private_redis.start()  # same port, empty (no persistence), no cached script
        await private_redis.wait_ready()

        async def recovered() -> bool:
            clock.advance(1.1)
            await limiter.check("open", "k", 1)
            return bool(ups)

        await eventually(recovered, what="the limiter to use Redis again")
        assert ups == [1]
        assert downs == [1]
        assert limiter.uses_redis
        # Redis is the source again: its fresh bucket took the probe, and now this call.
        again = await limiter.check("open", "k", 1)
        assert again.remaining == pytest.approx(3, abs=0.01)
        assert await stored_tokens(admin, key) == pytest.approx(3, abs=0.01)
        assert (await limiter.check("closed", "k", 1)).allowed
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        await client.aclose()
        await admin.aclose()


async def test_script_is_sent_again_after_a_script_flush(private_redis: RedisProcess) -> None:
    client = fast_client(private_redis.port)
    try:
        buckets = RedisBuckets(client)
        assert (await buckets.take("g", "k", SLOW, 1)).remaining == pytest.approx(4, abs=0.01)
        await client.script_flush()
        assert (await buckets.take("g", "k", SLOW, 1)).remaining == pytest.approx(3, abs=0.01)
    finally:
        await client.aclose()


async def test_probes_are_at_most_one_per_interval() -> None:
    class CountingRedis(Redis):
        calls = 0

        async def execute_command(self, *args: Any, **options: Any) -> Any:
            self.calls += 1
            return await super().execute_command(*args, **options)

    clock = FakeMonotonic()
    downs: list[int] = []
    client = CountingRedis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    limiter = RateLimiter(
        {"default": SLOW},
        client,
        set(),
        on_redis_down=lambda: downs.append(1),
        clock=clock,
        local=LocalBuckets(clock=clock),
        probe_interval=1.0,
    )
    try:
        for _ in range(5):
            assert (await limiter.check("g", "k", 1)).allowed
        assert (client.calls, downs) == (1, [1])
        clock.advance(0.5)
        await limiter.check("g", "k", 0)
        assert client.calls == 1
        clock.advance(0.6)
        for _ in range(5):
            await limiter.check("g", "k", 0)
        assert (client.calls, downs) == (2, [1])
    finally:
        await client.aclose()


async def test_a_silent_redis_cannot_hold_a_call() -> None:
    """A Redis that accepts connections and never answers: the limiter's timeout bounds each call."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis(host="127.0.0.1", port=port, socket_timeout=30, socket_connect_timeout=30)
    downs: list[int] = []
    limiter = RateLimiter(
        {"default": SLOW}, client, {"closed"}, on_redis_down=lambda: downs.append(1), redis_timeout=0.05
    )
    try:
        started = time.monotonic()
        decision = await limiter.check("open", "k", 1)
        assert decision == Decision(allowed=True, remaining=4, retry_after=0)
        assert time.monotonic() - started < 3  # not the client's own 30 s socket timeout
        assert downs == [1]
        with pytest.raises(errors.Unavailable):
            await limiter.check("closed", "k", 1)
    finally:
        await client.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


# --- Through a real gRPC server ------------------------------------------------------------

SERVICE = "tally.test.Echo"


async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def count_up(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for n in range(3):
        yield bytes([n])


async def total(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return bytes([sum([len(r) async for r in requests])])


async def echo_each(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def write_two(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"a")
    await context.write(b"b")


HANDLERS = {
    "Ping": grpc.unary_unary_rpc_method_handler(ping),
    "Costly": grpc.unary_unary_rpc_method_handler(ping),
    "Health": grpc.unary_unary_rpc_method_handler(ping),
    "Closed": grpc.unary_unary_rpc_method_handler(ping),
    "CountUp": grpc.unary_stream_rpc_method_handler(count_up),
    "Total": grpc.stream_unary_rpc_method_handler(total),
    "EchoEach": grpc.stream_stream_rpc_method_handler(echo_each),
    "WriteTwo": grpc.unary_stream_rpc_method_handler(write_two),
}

GROUP_FOR = method_groups(
    {
        f"/{SERVICE}/Ping": ("echo", 1),
        f"/{SERVICE}/Costly": ("echo", 10),
        f"/{SERVICE}/Health": ("health", 0),
        f"/{SERVICE}/Closed": ("closed", 1),
        f"/{SERVICE}/CountUp": ("count", 1),
        f"/{SERVICE}/Total": ("total", 1),
        f"/{SERVICE}/EchoEach": ("each", 1),
        f"/{SERVICE}/WriteTwo": ("write", 1),
    }
)

ECHO = RateLimit(rate=2, burst=5)
ONE = RateLimit(rate=2, burst=1)
LIMITS = {"default": ONE, "echo": ECHO}


class SubjectFromMetadata(grpc.aio.ServerInterceptor):
    """Stands in for the auth interceptor: sets the principal named by `x-subject`, if any."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            subject = dict(context.invocation_metadata() or ()).get("x-subject")
            token = set_principal(Principal(subject, Role.SERVICE) if subject else None)
            try:
                return await behavior(request, context)
            finally:
                reset_principal(token)

        return grpc.unary_unary_rpc_method_handler(wrapped)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[grpc.aio.Channel]]]:
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def start(limiter: RateLimiter) -> grpc.aio.Channel:
        chain: list[Any] = [
            ErrorMappingInterceptor(),
            SubjectFromMetadata(),
            RateLimitInterceptor(limiter, GROUP_FOR),
        ]
        server = grpc.aio.server(interceptors=chain)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, HANDLERS)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return channel

    try:
        yield start
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(grace=None)


def frozen_limiter(**kwargs: Any) -> RateLimiter:
    """Local buckets on a clock that never moves: no refill, exact numbers."""
    return RateLimiter(LIMITS, None, set(), local=LocalBuckets(clock=lambda: 0.0), **kwargs)


def method(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{name}")


async def test_sixth_call_is_resource_exhausted_with_retry_info(
    serve: Callable[..., Awaitable[grpc.aio.Channel]],
) -> None:
    rejected: list[str] = []
    limiter = frozen_limiter(on_reject=lambda group, decision: rejected.append(group))
    channel = await serve(limiter)
    call = method(channel, "Ping")
    for n in range(5):
        assert await call(bytes([n])) == bytes([n])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"x")
    error = caught.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit for echo exceeded" in (error.details() or "")
    found = details(error)
    assert found.reason == "RATE_LIMITED"
    assert found.retry is not None and found.quota is not None
    assert found.retry.retry_delay.ToTimedelta().total_seconds() == pytest.approx(1 / ECHO.rate)
    [violation] = found.quota.violations
    assert violation.subject == "echo:peer"
    assert violation.description == "2 requests/s, burst 5"
    assert rejected == ["echo"]
    # Keyed by the caller's address, as there was no principal.
    assert (await limiter.check("echo", "peer:127.0.0.1", 0)).remaining == 0


async def test_calls_with_a_principal_are_keyed_by_subject(
    serve: Callable[..., Awaitable[grpc.aio.Channel]],
) -> None:
    limiter = frozen_limiter()
    channel = await serve(limiter)
    call = method(channel, "Ping")
    for _ in range(5):
        await call(b"", metadata=(("x-subject", "svc_a"),))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", metadata=(("x-subject", "svc_a"),))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    quota = details(caught.value).quota
    assert quota is not None
    assert quota.violations[0].subject == "echo:principal"
    # Another principal, and the anonymous peer, still have their own full buckets.
    await call(b"", metadata=(("x-subject", "svc_b"),))
    await call(b"")
    assert (await limiter.check("echo", "svc_a", 0)).remaining == 0
    assert (await limiter.check("echo", "svc_b", 0)).remaining == 4
    assert (await limiter.check("echo", "peer:127.0.0.1", 0)).remaining == 4


async def test_cost_above_the_burst_is_explained(serve: Callable[..., Awaitable[grpc.aio.Channel]]) -> None:
    channel = await serve(frozen_limiter())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(channel, "Costly")(b"")
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "costs 10 tokens, more than the echo rate limit bucket holds" in (caught.value.details() or "")
    assert details(caught.value).reason == "COST_EXCEEDS_BURST"
    await method(channel, "Ping")(b"")  # and nothing was taken


async def test_cost_zero_exempts_a_method(serve: Callable[..., Awaitable[grpc.aio.Channel]]) -> None:
    channel = await serve(frozen_limiter())
    for _ in range(20):
        await method(channel, "Health")(b"")


async def test_every_handler_kind_is_limited(serve: Callable[..., Awaitable[grpc.aio.Channel]]) -> None:
    channel = await serve(frozen_limiter())

    async def requests(*chunks: bytes) -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    # The refused call sends no request messages: a client still writing when the server
    # has already refused may see its own INTERNAL ("Failed execute_batch") instead.
    calls: dict[str, Callable[[tuple[bytes, ...]], Awaitable[Any]]] = {
        "unary_stream": lambda chunks: _collect(channel.unary_stream(f"/{SERVICE}/CountUp")(b"")),
        "stream_unary": lambda chunks: channel.stream_unary(f"/{SERVICE}/Total")(requests(*chunks)),
        "stream_stream": lambda chunks: _collect(
            channel.stream_stream(f"/{SERVICE}/EchoEach")(requests(*chunks))
        ),
    }
    expected = {
        "unary_stream": [b"\x00", b"\x01", b"\x02"],
        "stream_unary": b"\x03",
        "stream_stream": [b"ab", b"c"],
    }
    for kind, call in calls.items():
        assert await call((b"ab", b"c")) == expected[kind], kind
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(())
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, kind
        assert details(caught.value).retry is not None, kind


async def test_a_streaming_handler_that_writes_stays_a_coroutine(
    serve: Callable[..., Awaitable[grpc.aio.Channel]],
) -> None:
    """A server-streaming handler may send with `await context.write(msg)` and return None;
    through error mapping and the limiter it still streams, and its refusal is the real status."""
    channel = await serve(frozen_limiter())
    assert await _collect(channel.unary_stream(f"/{SERVICE}/WriteTwo")(b"")) == [b"a", b"b"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _collect(channel.unary_stream(f"/{SERVICE}/WriteTwo")(b""))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(caught.value).retry is not None


async def test_fail_closed_group_is_unavailable_while_redis_is_down(
    serve: Callable[..., Awaitable[grpc.aio.Channel]],
) -> None:
    client = Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    limiter = RateLimiter(LIMITS, client, {"closed"}, redis_timeout=0.2)
    try:
        channel = await serve(limiter)
        assert await method(channel, "Ping")(b"open") == b"open"  # fail open
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(channel, "Closed")(b"")
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert details(caught.value).reason == "RATE_LIMITER_UNAVAILABLE"
    finally:
        await client.aclose()


async def _collect(call: Any) -> list[bytes]:
    return [message async for message in call]


# --- Reservations: batches of tokens per process, settled with Redis ------------------------

# Burst 100 and TALLY_RATE_LIMIT_BATCH_FRACTION's default 0.1: reservations of up to 10 tokens.
ROOMY = RateLimit(rate=0.01, burst=100)


def batched_limiter(client: Redis, prefix: str, limit: RateLimit, **kwargs: Any) -> RateLimiter:
    def down() -> None:
        pytest.fail("the limiter fell back to local buckets")

    return RateLimiter(
        {"default": limit},
        client,
        set(),
        key_prefix=prefix,
        redis_timeout=5,
        on_redis_down=down,
        **{"batch": 64, **kwargs},
    )


async def bucket_state(client: Redis, key: str) -> tuple[float, int]:
    """(tokens outside reservations, tokens reserved) as stored in Redis."""
    state = await client.hgetall(key)
    return float(state[b"tokens"]), int(state.get(b"held", b"0"))


@pytest.mark.redis
async def test_a_reservation_serves_checks_without_round_trips(shared_redis: Redis, key_prefix: str) -> None:
    limiter = batched_limiter(shared_redis, key_prefix, ROOMY)
    assert limiter.batch_for(ROOMY) == 10
    decisions = [await limiter.check("g", "k", 1) for _ in range(60)]
    assert all(d.allowed for d in decisions)
    # The first call takes 1 and reserves 8, later ones 1 and the whole batch of 10: 9 + 5 * 11.
    assert limiter.redis_calls == 6
    assert limiter.held("g", "k") == 64 - 60
    # Redis counts what this process holds as taken from the bucket, not as spent.
    tokens, held = await bucket_state(shared_redis, f"{key_prefix}:g:k")
    assert held >= limiter.held("g", "k") > 0
    assert tokens + limiter.held("g", "k") == pytest.approx(ROOMY.burst - 60, abs=0.1)
    assert tokens + held <= ROOMY.burst
    # Remaining, for a check served locally: the bucket at the reservation, plus what is held.
    assert decisions[-1].remaining == pytest.approx(ROOMY.burst - 60, abs=0.1)
    # In per-call mode the same checks cost one round trip each.
    per_call = shared_limiter(shared_redis, key_prefix, ROOMY)
    for _ in range(5):
        assert (await per_call.check("g", "other", 1)).allowed
    assert per_call.redis_calls == 5
    assert per_call.batch_for(ROOMY) == 0


@pytest.mark.redis
async def test_reserved_tokens_count_as_in_the_bucket(shared_redis: Redis, key_prefix: str) -> None:
    """The bucket refills only up to burst - reserved: a full bucket beside a reservation would
    let a client spend more than the burst."""
    fast = RateLimit(rate=1000, burst=100)
    holder = batched_limiter(shared_redis, key_prefix, fast)
    peeker = shared_limiter(shared_redis, key_prefix, fast)
    assert (await holder.check("g", "k", 1)).allowed
    assert holder.held("g", "k") == 8
    peeks: list[float] = []

    async def refilled() -> bool:
        peeks.append((await peeker.check("g", "k", 0)).remaining)
        return peeks[-1] >= fast.burst - 8

    await eventually(refilled, what="the bucket to refill")
    assert max(peeks) == fast.burst - 8
    await holder.settle()  # returns the 8, which fills the bucket exactly
    assert (await peeker.check("g", "k", 0)).remaining == fast.burst
    assert await bucket_state(shared_redis, f"{key_prefix}:g:k") == (fast.burst, 0)


@pytest.mark.redis
async def test_refusals_near_the_limit_are_exact(shared_redis: Redis, key_prefix: str) -> None:
    other = Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        replicas = [
            batched_limiter(shared_redis, key_prefix, ROOMY),
            batched_limiter(other, key_prefix, ROOMY),
        ]
        admitted = 0
        refusals: list[Decision] = []
        for turn in range(300):
            decision = await replicas[turn % 2].check("g", "k", 1)
            admitted += decision.allowed
            if not decision.allowed:
                refusals.append(decision)
        # Each replica settled its reservation in the call that was refused: nothing is held,
        # and exactly the burst got through (the refill of 0.01/s adds no whole token here).
        assert [replica.held("g", "k") for replica in replicas] == [0, 0]
        assert admitted == ROOMY.burst
        assert await bucket_state(shared_redis, f"{key_prefix}:g:k") == pytest.approx((0, 0), abs=0.05)
        # The refusals came from Redis: its tokens and its Retry-After.
        assert all(r.remaining < 1 for r in refusals)
        assert refusals[-1].retry_after == pytest.approx((1 - refusals[-1].remaining) / ROOMY.rate, abs=1)
        assert 0 < refusals[-1].retry_after <= 1 / ROOMY.rate
        # Past the first refusals, near the limit, every check was a round trip.
        calls = [replica.redis_calls for replica in replicas]
        assert (await replicas[0].check("g", "k", 1)).allowed is False
        assert replicas[0].redis_calls == calls[0] + 1
        # A cost above the burst is still "never".
        assert (await replicas[1].check("g", "k", 101)).never
    finally:
        await other.aclose()


@pytest.mark.redis
async def test_settling_returns_unspent_tokens_another_process_can_use(
    shared_redis: Redis, key_prefix: str
) -> None:
    other = Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        holder = batched_limiter(shared_redis, key_prefix, ROOMY)
        drainer = batched_limiter(other, key_prefix, ROOMY)
        assert (await holder.check("g", "k", 1)).allowed
        held = holder.held("g", "k")
        assert held == 8
        drained = 0
        while (await drainer.check("g", "k", 1)).allowed:
            drained += 1
        assert drained == ROOMY.burst - 1 - held  # refused early by exactly what the other holds
        await holder.settle()
        assert holder.held("g", "k") == 0
        assert await bucket_state(shared_redis, f"{key_prefix}:g:k") == pytest.approx((held, 0), abs=0.05)
        regained = 0
        while (await drainer.check("g", "k", 1)).allowed:
            regained += 1
        assert regained == held
    finally:
        await other.aclose()


@pytest.mark.redis
async def test_a_reservation_is_settled_when_its_lease_ends(shared_redis: Redis, key_prefix: str) -> None:
    clock = FakeMonotonic()
    limiter = batched_limiter(shared_redis, key_prefix, ROOMY, clock=clock, lease=0.5)
    key = f"{key_prefix}:g:k"
    assert (await limiter.check("g", "k", 1)).allowed
    assert (await limiter.check("g", "k", 1)).allowed
    assert (limiter.redis_calls, limiter.held("g", "k")) == (1, 7)
    clock.advance(0.5)  # the lease is over: the 7 tokens left are not spent any more
    assert limiter.held("g", "k") == 0
    assert (await limiter.check("g", "k", 1)).allowed
    assert limiter.redis_calls == 2
    # That call returned the 7, took 1, and reserved anew, sized to the rate seen: 1 spent from
    # the reservation in its lease.
    tokens, held = await bucket_state(shared_redis, key)
    assert held == limiter.held("g", "k") == 1
    assert tokens == pytest.approx(ROOMY.burst - 3 - held, abs=0.05)


@pytest.mark.redis
async def test_an_unsettled_reservation_expires_in_redis_without_minting(
    shared_redis: Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}:g:k"
    crashed = batched_limiter(shared_redis, key_prefix, ROOMY, lease=0.05, hold_grace=0)
    assert (await crashed.check("g", "k", 1)).allowed
    assert await bucket_state(shared_redis, key) == pytest.approx((91, 8), abs=0.05)
    survivor = batched_limiter(shared_redis, key_prefix, ROOMY)

    async def expired() -> bool:
        await survivor.check("g", "k", 0)  # any call on the bucket purges what has expired
        return (await bucket_state(shared_redis, key))[1] == 0

    await eventually(expired, what="the abandoned reservation to expire")
    # Its 8 tokens are gone (they may have been spent), not back in the bucket.
    assert (await bucket_state(shared_redis, key))[0] == pytest.approx(91, abs=0.05)
    assert await shared_redis.hget(key, f"h:{crashed.holder}") is None
    # The holder's late settlement cannot return them either.
    await crashed.settle()
    assert (await bucket_state(shared_redis, key))[0] == pytest.approx(91, abs=0.05)


@pytest.mark.redis
async def test_concurrent_checks_share_one_reserving_call(shared_redis: Redis, key_prefix: str) -> None:
    limiter = batched_limiter(shared_redis, key_prefix, RateLimit(rate=0.01, burst=1000))
    decisions = await asyncio.gather(*(limiter.check("g", "k", 1) for _ in range(50)))
    assert all(d.allowed for d in decisions)
    assert limiter.redis_calls < 50
    tokens, held = await bucket_state(shared_redis, f"{key_prefix}:g:k")
    assert held >= limiter.held("g", "k")
    assert tokens + limiter.held("g", "k") == pytest.approx(1000 - 50, abs=0.1)


@pytest.mark.redis
def test_two_processes_stay_within_the_stated_bound(key_prefix: str) -> None:
    """Two OS processes, each its own limiter and Redis client, hammer one bucket for a second:
    the admitted total never exceeds burst + rate * elapsed, and falls short of it by at most
    P * B + cost (module docstring of interceptors.rate_limit)."""
    rate, burst, batch, processes = 200.0, 400, 64, 2
    bound = processes * min(batch, int(burst * 0.1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "tests.integration.limiter_hammer", REDIS_URL, key_prefix]
    command += [str(rate), str(burst), str(batch), "1.0", "4"]
    workers = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        started = time.monotonic()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [json.loads(worker.communicate(timeout=60)[0].splitlines()[-1]) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert [worker.returncode for worker in workers] == [0, 0]
    assert all(result["downs"] == 0 and result["admitted"] > 0 for result in results)
    admitted = sum(result["admitted"] for result in results)
    checks = admitted + sum(result["refused"] for result in results)
    ceiling = burst + rate * (max(result["last_end"] for result in results) - started)
    floor = burst + rate * (
        max(result["last_redis_start"] for result in results) - min(result["first_end"] for result in results)
    )
    assert admitted <= ceiling
    assert admitted >= floor - bound - 1
    assert sum(result["redis_calls"] for result in results) < checks  # reservations were used


async def test_redis_failing_while_a_reservation_is_held(private_redis: RedisProcess) -> None:
    clock = FakeMonotonic()
    downs: list[int] = []
    ups: list[int] = []
    client = fast_client(private_redis.port)
    admin = fast_client(private_redis.port)
    limiter = RateLimiter(
        {"default": ROOMY},
        client,
        {"closed"},
        on_redis_down=lambda: downs.append(1),
        on_redis_up=lambda: ups.append(1),
        clock=clock,
        local=LocalBuckets(clock=clock),
        redis_timeout=2,
        probe_interval=1.0,
        batch=64,
        lease=60,
    )
    try:
        assert (await limiter.check("open", "k", 1)).allowed
        assert (await limiter.check("closed", "k", 1)).allowed
        assert limiter.held("open", "k") == limiter.held("closed", "k") == 8
        calls = limiter.redis_calls

        private_redis.stop()

        # Tokens already taken from Redis are still spent here, without noticing the outage.
        for _ in range(8):
            assert (await limiter.check("open", "k", 1)).allowed
            assert (await limiter.check("closed", "k", 1)).allowed
        assert (limiter.redis_calls, downs) == (calls, [])
        # Spent: the next check needs Redis, fails, and falls back as without reservations.
        fallback = await limiter.check("open", "k", 1)
        assert (fallback.allowed, fallback.remaining) == (True, ROOMY.burst - 1)  # a fresh local bucket
        assert downs == [1]
        assert not limiter.uses_redis
        with pytest.raises(errors.Unavailable):
            await limiter.check("closed", "k", 1)
        assert limiter.held("open", "k") == 0

        private_redis.start()  # empty: the reservations it held are gone with it
        await private_redis.wait_ready()

        async def recovered() -> bool:
            clock.advance(1.1)
            await limiter.check("open", "k", 1)
            return bool(ups)

        await eventually(recovered, what="the limiter to use Redis again")
        # A fresh bucket: the probe took 1 and reserved; nothing was returned from before.
        key = RedisBuckets(client).key("open", "k")
        tokens, held = await bucket_state(admin, key)
        assert held == limiter.held("open", "k") > 0
        assert tokens + held == pytest.approx(ROOMY.burst - 1, abs=0.05)
        assert (await limiter.check("closed", "k", 1)).allowed
    finally:
        await client.aclose()
        await admin.aclose()

"""The read-through cache (core/cache.py) on real PostgreSQL and real Redis (TALLY_TEST_REDIS_URL).

Invalidation after commit for accounts, plans and entitlements; the read-populate race driven
deterministically; Redis killed or frozen mid-test (a private redis-server); the access check
before the cache; the TTL safety net; caching off. Two `tally serve` processes sharing one Redis
are in tests/e2e/test_read_cache.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.protobuf import field_mask_pb2
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc import use_cases
from account_svc.domain import Account, AccountFields
from account_svc.repository import AccountRow
from account_svc.sql_unit_of_work import SqlAccountsUnitOfWork
from account_svc.use_cases import AccountDeps, account_generation
from app.server import App, build_components
from core import db
from core.cache import PREFIX, NoCache, ReadCache, RedisReadCache
from core.clock import SystemClock
from core.metrics import Metrics
from core.pagination import PageTokens
from core.principal import SYSTEM, Role
from core.settings import Settings, SettingsError, load_settings
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as pb
from tally.subscription.v1.subscription_pb2_grpc import SubscriptionServiceStub
from tests.billing_support import new_account, new_plan, usd
from tests.support import REDIS_URL, channel_as, eventually, failing, free_port, mint, serving, unavailable

pytestmark = pytest.mark.postgres


@pytest.fixture
async def redis_db() -> AsyncIterator[str]:
    """The test Redis database, with this module's cache keys removed before and after."""
    client = redis_asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc!r}; set TALLY_TEST_REDIS_URL")
    await _forget(client)
    try:
        yield REDIS_URL
    finally:
        await _forget(client)
        await client.aclose()


async def _forget(client: Any) -> None:
    async for key in client.scan_iter(match=f"{PREFIX}*"):
        await client.delete(key)


def reads(metrics: Metrics, kind: str, result: str) -> float:
    return (
        metrics.registry.get_sample_value("tally_cache_reads_total", {"kind": kind, "result": result}) or 0.0
    )


def deps_on(engine: AsyncEngine, cache: ReadCache, *, reader: Any = None) -> AccountDeps:
    writers, readers = db.session_factory(engine), db.session_factory(db.read_only(engine))
    clock = SystemClock()
    return AccountDeps(
        new_uow=lambda: SqlAccountsUnitOfWork(writers, clock=clock, cache=cache),
        new_reader=reader or (lambda: SqlAccountsUnitOfWork(readers, clock=clock)),
        clock=clock,
        page_tokens=PageTokens(b"read-cache-test-secret-0123456789"),
        cache=cache,
    )


async def create(deps: AccountDeps, name: str = "Before") -> Account:
    fields = AccountFields(display_name=name, email=f"{name.lower()}@example.test", currency_code="EUR")
    return await use_cases.create_account(deps, SYSTEM, fields)


async def rename(deps: AccountDeps, account_id: str, name: str) -> Account:
    return await use_cases.update_account(
        deps, SYSTEM, account_id, AccountFields(display_name=name), ["display_name"]
    )


@pytest.fixture
async def cache_on(redis_db: str) -> AsyncIterator[tuple[RedisReadCache, Metrics]]:
    metrics = Metrics()
    client = redis_asyncio.Redis.from_url(redis_db, socket_connect_timeout=1, socket_timeout=1)
    cache = RedisReadCache(client, ttl_seconds=300, timeout_seconds=1)
    cache.report_to(metrics)
    try:
        yield cache, metrics
    finally:
        await cache.close()


# --- invalidation after commit --------------------------------------------------------------------


async def test_a_write_retires_the_cached_account(
    pg_engine: AsyncEngine, cache_on: tuple[RedisReadCache, Metrics]
) -> None:
    cache, metrics = cache_on
    deps = deps_on(pg_engine, cache)
    account = await create(deps)
    assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "Before"
    assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "Before"
    assert (reads(metrics, "accounts", "miss"), reads(metrics, "accounts", "hit")) == (1, 1)
    await rename(deps, account.id, "After")
    assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "After"
    deleted = await use_cases.delete_account(deps, SYSTEM, account.id)
    with pytest.raises(Exception, match="not found"):
        await use_cases.get_account(deps, SYSTEM, account.id)
    shown = await use_cases.get_account(deps, SYSTEM, account.id, show_deleted=True)
    assert shown.delete_time == deleted.delete_time
    # Each read after a write went to the database (the deleted account too, then cached).
    assert (reads(metrics, "accounts", "miss"), reads(metrics, "accounts", "hit")) == (3, 2)


async def test_a_rolled_back_write_invalidates_nothing(
    pg_engine: AsyncEngine, cache_on: tuple[RedisReadCache, Metrics]
) -> None:
    cache, metrics = cache_on
    deps = deps_on(pg_engine, cache)
    account = await create(deps)
    await use_cases.get_account(deps, SYSTEM, account.id)
    async with deps.new_uow() as uow:
        current = await uow.accounts.get(account.id, for_update=True)
        assert current is not None
        await uow.accounts.save(replace(current, display_name="Never"))
        uow.invalidate_after_commit(account_generation(account.id))
        # no commit: the block rolls back, and the invalidation never runs
    assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "Before"
    assert reads(metrics, "accounts", "hit") == 1


# --- the read-populate race -------------------------------------------------------------------


class PausingReader:
    """A reader unit of work whose account read stops, after the database answered, until told to go on."""

    def __init__(self, engine: AsyncEngine, read_done: asyncio.Event, proceed: asyncio.Event):
        self._inner = SqlAccountsUnitOfWork(db.session_factory(db.read_only(engine)), clock=SystemClock())
        self._read_done, self._proceed = read_done, proceed

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    @property
    def accounts(self) -> Any:
        outer = self

        class Accounts:
            async def get(self, account_id: str, *, for_update: bool = False) -> Account | None:
                found = await outer._inner.accounts.get(account_id, for_update=for_update)
                outer._read_done.set()
                await outer._proceed.wait()
                return found

        return Accounts()


async def test_a_reader_that_read_before_a_write_cannot_store_the_old_row(
    pg_engine: AsyncEngine, cache_on: tuple[RedisReadCache, Metrics]
) -> None:
    cache, metrics = cache_on
    plain = deps_on(pg_engine, cache)
    account = await create(plain)
    read_done, proceed = asyncio.Event(), asyncio.Event()
    slow = deps_on(pg_engine, cache, reader=lambda: PausingReader(pg_engine, read_done, proceed))
    # The reader misses, reads the old row from the database, and stops before filling the cache.
    reader = asyncio.create_task(use_cases.get_account(slow, SYSTEM, account.id))
    await read_done.wait()
    # The writer commits and invalidates in the meantime.
    await rename(plain, account.id, "After")
    proceed.set()
    assert (await reader).display_name == "Before"  # what it read, answered to its own caller
    assert reads(metrics, "accounts", "stale_fill") == 1  # ... but refused by the compare-and-set
    # Nothing stale was left behind: the next read misses and gets the new row, then hits it.
    assert (await use_cases.get_account(plain, SYSTEM, account.id)).display_name == "After"
    assert (await use_cases.get_account(plain, SYSTEM, account.id)).display_name == "After"
    assert (reads(metrics, "accounts", "miss"), reads(metrics, "accounts", "hit")) == (1, 1)


async def test_an_entry_filled_before_the_invalidation_is_dead_after_it(
    pg_engine: AsyncEngine, cache_on: tuple[RedisReadCache, Metrics]
) -> None:
    """The other order: the reader fills first (old row), the writer's invalidation comes after."""
    cache, metrics = cache_on
    deps = deps_on(pg_engine, cache)
    account = await create(deps)
    async with deps.new_uow() as uow:
        current = await uow.accounts.get(account.id, for_update=True)
        assert current is not None
        await uow.accounts.save(replace(current, display_name="After", revision=current.revision + 1))
        uow.invalidate_after_commit(account_generation(account.id))
        # A reader fills the cache while the write is not committed yet (it sees the old row).
        assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "Before"
        await uow.commit()
    assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "After"
    assert reads(metrics, "accounts", "hit") == 0


# --- Redis down or slow ---------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own, on a free port, with no persistence."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        unavailable("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process, f"redis://127.0.0.1:{port}/0"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)


async def _private_cache(url: str, metrics: Metrics) -> RedisReadCache:
    client = redis_asyncio.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)

    async def up() -> bool:
        try:
            return bool(await client.ping())
        except Exception:
            return False

    await eventually(up, what="the private redis-server to answer")
    cache = RedisReadCache(client, ttl_seconds=300, timeout_seconds=0.2)
    cache.report_to(metrics)
    return cache


async def test_redis_killed_mid_test_reads_come_from_the_database(
    pg_engine: AsyncEngine,
    private_redis: tuple[subprocess.Popen[bytes], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    process, url = private_redis
    metrics = Metrics()
    cache = await _private_cache(url, metrics)
    try:
        deps = deps_on(pg_engine, cache)
        account = await create(deps)
        await use_cases.get_account(deps, SYSTEM, account.id)
        await use_cases.get_account(deps, SYSTEM, account.id)
        assert reads(metrics, "accounts", "hit") == 1
        process.kill()
        process.wait(timeout=10)
        caplog.set_level(logging.WARNING, logger="tally.cache")
        for _ in range(5):
            assert (await use_cases.get_account(deps, SYSTEM, account.id)).id == account.id
        await rename(deps, account.id, "After")  # its invalidation fails: logged once, no error
        assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "After"
        assert reads(metrics, "accounts", "bypass") == 6
        assert metrics.registry.get_sample_value("tally_cache_up") == 0
        down_lines = [r for r in caplog.records if r.name == "tally.cache" and "unavailable" in r.message]
        assert len(down_lines) == 1, [r.message for r in caplog.records]
    finally:
        await cache.close()


async def test_a_frozen_redis_costs_a_bounded_wait_and_a_lost_invalidation_is_made_good(
    pg_engine: AsyncEngine, private_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    """SIGSTOP: Redis accepts nothing and answers nothing. Calls time out (0.2 s here), the cache
    steps aside, and the invalidation that could not be sent retires every entry once Redis is back."""
    process, url = private_redis
    metrics = Metrics()
    cache = await _private_cache(url, metrics)
    try:
        deps = deps_on(pg_engine, cache)
        account = await create(deps)
        await use_cases.get_account(deps, SYSTEM, account.id)  # cached: "Before"
        process.send_signal(signal.SIGSTOP)
        await rename(deps, account.id, "After")  # the INCR times out: the invalidation is lost
        assert metrics.registry.get_sample_value("tally_cache_errors_total", {"operation": "invalidate"}) == 1
        assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "After"
        process.send_signal(signal.SIGCONT)

        async def fresh_from_cache() -> bool:
            account_now = await use_cases.get_account(deps, SYSTEM, account.id)
            return account_now.display_name == "After" and reads(metrics, "accounts", "hit") >= 1

        # The old "Before" entry is still in Redis, under an unchanged account generation: only the
        # epoch bump on recovery keeps it from being served.
        await eventually(fresh_from_cache, what="the cache to be used again, with the new name")
        assert metrics.registry.get_sample_value("tally_cache_up") == 1
    finally:
        await cache.close()


# --- through the server: authorisation first, plans, entitlements, settings -----------------------


@pytest.fixture
async def cached_app(postgres_settings: Settings, postgres_clean: None, redis_db: str) -> AsyncIterator[App]:
    async with serving(postgres_settings.model_copy(update={"redis_url": redis_db})) as app:
        yield app


async def test_a_customer_never_reads_another_accounts_cached_entry(cached_app: App) -> None:
    async with channel_as(cached_app, mint(cached_app)) as admin:
        mine, theirs = await new_account(admin, 1), await new_account(admin, 2)
        stub = account_pb2_grpc.AccountServiceStub(admin)
        for _ in range(2):  # their entry is in the cache, warm
            await stub.GetAccount(account_pb2.GetAccountRequest(id=theirs.id))
    metrics = cached_app.metrics
    hits = reads(metrics, "accounts", "hit")
    assert hits == 1
    async with channel_as(cached_app, mint(cached_app, Role.CUSTOMER, account_id=mine.id)) as customer:
        stub = account_pb2_grpc.AccountServiceStub(customer)
        error = await failing(stub.GetAccount(account_pb2.GetAccountRequest(id=theirs.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        subs = SubscriptionServiceStub(customer)
        error = await failing(subs.GetEntitlements(pb.GetEntitlementsRequest(account_id=theirs.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        # The cache was never asked: refused before it.
        assert reads(metrics, "accounts", "hit") == hits
        assert reads(metrics, "accounts", "miss") == 1
        assert (await stub.GetAccount(account_pb2.GetAccountRequest(id=mine.id))).id == mine.id


def _entitled(found: pb.Entitlements) -> dict[str, object]:
    return {e.feature_code: e.limit if e.HasField("limit") else e.enabled for e in found.entitlements}


async def test_plans_and_entitlements_follow_every_change(cached_app: App) -> None:
    async with channel_as(cached_app, mint(cached_app)) as admin:
        plans, subs = plan_pb2_grpc.PlanServiceStub(admin), SubscriptionServiceStub(admin)
        account = await new_account(admin, 3)
        plan = await new_plan(admin, "cached", features=[plan_pb2.Feature(code="projects", limit=5)])
        get_plan = plan_pb2.GetPlanRequest(id=plan.id)
        ask = pb.GetEntitlementsRequest(account_id=account.id)
        assert _entitled(await subs.GetEntitlements(ask)) == {}
        assert _entitled(await subs.GetEntitlements(ask)) == {}  # an empty answer is cached too
        assert (await plans.GetPlan(get_plan)).version == 1
        sub = await subs.CreateSubscription(
            pb.CreateSubscriptionRequest(subscription=pb.Subscription(account_id=account.id, plan_id=plan.id))
        )
        assert _entitled(await subs.GetEntitlements(ask)) == {"projects": 5}
        # The plan's features change in place: every account's entitlements follow.
        await plans.UpdatePlan(
            plan_pb2.UpdatePlanRequest(
                plan=plan_pb2.Plan(id=plan.id, features=[plan_pb2.Feature(code="projects", limit=50)]),
                update_mask=field_mask_pb2.FieldMask(paths=["features"]),
            )
        )
        assert _entitled(await subs.GetEntitlements(ask)) == {"projects": 50}
        assert (await plans.GetPlan(get_plan)).features[0].limit == 50
        await plans.UpdatePlan(
            plan_pb2.UpdatePlanRequest(
                plan=plan_pb2.Plan(id=plan.id, display_name="Renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
        assert (await plans.GetPlan(get_plan)).display_name == "Renamed"
        assert (await plans.GetPlan(plan_pb2.GetPlanRequest(id=plan.id, version=1))).display_name == "Renamed"
        assert (await plans.GetPlan(get_plan)).features[0].limit == 50
        # The version is in use now: new terms make version 2, which the latest read must show.
        await plans.UpdatePlan(
            plan_pb2.UpdatePlanRequest(
                plan=plan_pb2.Plan(id=plan.id, base_fee=usd(4500)),
                update_mask=field_mask_pb2.FieldMask(paths=["base_fee"]),
            )
        )
        latest = await plans.GetPlan(get_plan)
        assert (latest.version, latest.base_fee.amount_minor) == (2, 4500)
        assert (
            await plans.GetPlan(plan_pb2.GetPlanRequest(id=plan.id, version=1))
        ).base_fee.amount_minor == 3000
        await subs.PauseSubscription(pb.PauseSubscriptionRequest(id=sub.id))
        assert _entitled(await subs.GetEntitlements(ask)) == {}
    metrics = cached_app.metrics
    assert reads(metrics, "entitlements", "hit") >= 1 and reads(metrics, "plans", "miss") >= 4


async def test_the_ttl_is_the_safety_net_for_a_write_that_skipped_invalidation(
    pg_engine: AsyncEngine, redis_db: str
) -> None:
    metrics = Metrics()
    client = redis_asyncio.Redis.from_url(redis_db, socket_connect_timeout=1, socket_timeout=1)
    cache = RedisReadCache(client, ttl_seconds=0.5, timeout_seconds=1)
    cache.report_to(metrics)
    try:
        deps = deps_on(pg_engine, cache)
        account = await create(deps)
        await use_cases.get_account(deps, SYSTEM, account.id)
        ttl_ms = await client.pttl(f"{PREFIX}e:account:{account.id}")
        assert 0 < ttl_ms <= 500
        # A write the cache is not told of (by hand, no after_commit).
        async with db.session_factory(pg_engine)() as session:
            await session.execute(
                update(AccountRow).where(AccountRow.id == account.id).values(display_name="Sneaky")
            )
            await session.commit()
        assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "Before"  # cached

        async def expired() -> bool:
            return (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "Sneaky"

        await eventually(expired, what="the entry to expire")
    finally:
        await cache.close()


async def test_cache_off_reads_the_database_and_writes_nothing_to_redis(
    postgres_settings: Settings, postgres_clean: None, redis_db: str
) -> None:
    settings = postgres_settings.model_copy(update={"redis_url": redis_db, "cache": "off"})
    assert not settings.cache_enabled
    components = await build_components(settings)
    try:
        assert isinstance(components.platform.cache, NoCache) and components.cache is None
        deps = components.accounts
        account = await create(deps)
        await rename(deps, account.id, "After")
        assert (await use_cases.get_account(deps, SYSTEM, account.id)).display_name == "After"
    finally:
        await components.close()
    client = redis_asyncio.Redis.from_url(redis_db)
    try:
        assert [key async for key in client.scan_iter(match=f"{PREFIX}*")] == []
    finally:
        await client.aclose()


def test_cache_settings() -> None:
    assert load_settings(redis_url="redis://127.0.0.1:6379/0").cache_enabled  # on with Redis by default
    assert not load_settings().cache_enabled  # no Redis, no cache
    with pytest.raises(SettingsError, match=r"TALLY_CACHE.*needs TALLY_REDIS_URL"):
        load_settings(cache="on")

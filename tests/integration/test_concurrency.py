"""Real concurrency against PostgreSQL: racing creates, duplicate request ids, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from asyncpg.transaction import Transaction
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc import use_cases
from account_svc.domain import AccountFields
from account_svc.sql_unit_of_work import SqlAccountsUnitOfWork
from account_svc.use_cases import AccountDeps
from app.server import App, build
from core import db
from core.clock import SystemClock
from core.errors import AlreadyExists
from core.pagination import PageTokens
from core.principal import SYSTEM, Caller
from core.settings import Settings
from tally.account.v1 import account_pb2, account_pb2_grpc
from tests.support import asyncpg_dsn, channel_as, cheap_passwords, mint, serving

pytestmark = pytest.mark.postgres
RACERS = 12


@pytest.fixture
def deps(pg_engine: AsyncEngine) -> AccountDeps:
    sessions = db.session_factory(pg_engine)
    return AccountDeps(
        new_uow=lambda: SqlAccountsUnitOfWork(sessions),
        new_reader=lambda: SqlAccountsUnitOfWork(sessions),
        clock=SystemClock(),
        page_tokens=PageTokens(b"0123456789abcdef"),
    )


async def live_accounts(url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetch("SELECT id, email FROM accounts WHERE delete_time IS NULL")
    finally:
        await connection.close()


async def lock_waiters(connection: asyncpg.Connection, url: str) -> int:
    database = url.rsplit("/", 1)[-1]
    return int(
        await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = $1", database
        )
    )


async def waits_on_lock(connection: asyncpg.Connection, url: str, *, expected: bool = True) -> bool:
    """Poll (bounded, 5 s) until some backend of this database waits on a lock (or, with
    expected=False, until none does); True when that happened."""
    for _ in range(500):
        if bool(await lock_waiters(connection, url)) == expected:
            return True
        await asyncio.sleep(0.01)
    return False


async def create_account(stub: account_pb2_grpc.AccountServiceStub, email: str) -> account_pb2.Account:
    return await stub.CreateAccount(
        account_pb2.CreateAccountRequest(
            account=account_pb2.Account(display_name="Before", email=email, currency_code="USD")
        )
    )


@contextlib.asynccontextmanager
async def row_locked(url: str, account_id: str) -> AsyncIterator[tuple[asyncpg.Connection, Transaction]]:
    """Another connection holding the account's row lock until the transaction it yields ends."""
    blocker = await asyncpg.connect(asyncpg_dsn(url))
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account_id)
        yield blocker, transaction
    finally:
        await blocker.close()


async def test_racing_creates_with_one_email_exactly_one_wins(deps: AccountDeps, postgres_url: str) -> None:
    start = asyncio.Event()

    async def racer(n: int) -> str:
        await start.wait()
        fields = AccountFields(display_name=f"Racer {n}", email="race@example.test", currency_code="EUR")
        account = await use_cases.create_account(deps, SYSTEM, fields)
        return account.id

    tasks = [asyncio.create_task(racer(n)) for n in range(RACERS)]
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, AlreadyExists)]
    assert len(winners) == 1, results
    assert len(losers) == RACERS - 1, results
    assert [row["id"] for row in await live_accounts(postgres_url)] == winners


async def test_concurrent_duplicates_of_one_request_execute_once(
    deps: AccountDeps, postgres_url: str
) -> None:
    start = asyncio.Event()
    fields = AccountFields(display_name="Once", email="once@example.test", currency_code="USD")

    async def duplicate() -> str:
        await start.wait()
        caller = Caller(SYSTEM.principal, "test", "retry-storm-1")
        return (await use_cases.create_account(deps, caller, fields)).id

    tasks = [asyncio.create_task(duplicate()) for _ in range(RACERS)]
    start.set()
    ids = await asyncio.gather(*tasks)

    assert len(set(ids)) == 1
    assert [row["id"] for row in await live_accounts(postgres_url)] == ids[:1]


async def test_shutdown_finishes_in_flight_calls_and_refuses_new_ones(
    postgres_settings: Settings, postgres_clean: None, postgres_url: str
) -> None:
    app = await build(postgres_settings, passwords=cheap_passwords())
    await app.start()
    try:
        async with channel_as(app, mint(app)) as channel:
            stub = account_pb2_grpc.AccountServiceStub(channel)
            created = await create_account(stub, "inflight@example.test")
            # Hold the account's row lock so the update below is provably in flight when shutdown starts.
            async with row_locked(postgres_url, created.id) as (blocker, transaction):
                update = asyncio.ensure_future(
                    stub.UpdateAccount(
                        account_pb2.UpdateAccountRequest(
                            account=account_pb2.Account(id=created.id, display_name="After")
                        ),
                        timeout=20,
                    )
                )
                assert await waits_on_lock(blocker, postgres_url), "the update never reached the row lock"

                health = health_pb2_grpc.HealthStub(channel)
                stopping = asyncio.create_task(app.stop(grace=20))
                # Once shutdown has begun, health says NOT_SERVING and then new calls are refused,
                # while the update is still in flight.
                serving = health_pb2.HealthCheckResponse.SERVING
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    for _ in range(500):
                        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                        assert reply.status in (serving, health_pb2.HealthCheckResponse.NOT_SERVING)
                        await asyncio.sleep(0.01)
                # grpc core refuses a call racing the shutdown with UNAVAILABLE (GOAWAY seen first)
                # or CANCELLED (stream opened first); either way it never ran.
                assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                assert not update.done()
                await transaction.rollback()
                updated = await update
                await stopping
    finally:
        await app.engine.dispose()

    assert updated.display_name == "After"
    rows = await live_accounts(postgres_url)
    assert len(rows) == 1
    connection = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        assert await connection.fetchval("SELECT display_name FROM accounts") == "After"
    finally:
        await connection.close()


# Nothing in the background uses the pool: whichever use meets a cut connection first invalidates
# the pool, so a readiness probe, a worker's claim or a purge doing it would leave the test's calls
# only fresh connections to see (it failed so on a loaded machine, the usage upkeep at start first).
QUIET = {
    "readiness_probe_interval_seconds": 0,
    "usage_upkeep_interval_seconds": 0,
    "idempotency_purge_interval_seconds": 0,
    "billing_worker": False,
    "collection_worker": False,
    "webhook_delivery": False,
    "payment_reconciler": False,
}


@pytest.fixture
async def pg_app(postgres_settings: Settings, postgres_clean: None) -> AsyncIterator[App]:
    async with serving(postgres_settings.model_copy(update=QUIET)) as app:
        yield app


async def test_lost_database_connections_give_unavailable_then_recover(
    pg_app: App, postgres_url: str
) -> None:
    async with channel_as(pg_app, mint(pg_app)) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        created = await create_account(stub, "kept@example.test")
        killer = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            killed = await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                postgres_url.rsplit("/", 1)[-1],
            )
        finally:
            await killer.close()
        assert killed >= 1

        codes = []
        for _ in range(3):
            try:
                reply = await stub.GetAccount(account_pb2.GetAccountRequest(id=created.id), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
        # Pooled connections were cut: calls fail as retryable UNAVAILABLE (never INTERNAL)
        # until the pool has replaced them, then succeed again.
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK}, codes
        assert codes[0] == grpc.StatusCode.UNAVAILABLE, codes
        assert codes[-1] == grpc.StatusCode.OK, codes
        assert reply.id == created.id


async def test_deadline_cancels_database_work(pg_app: App, postgres_url: str) -> None:
    """A call whose deadline passes while it waits on the database stops waiting and changes nothing."""
    async with channel_as(pg_app, mint(pg_app)) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        created = await create_account(stub, "late@example.test")
        async with row_locked(postgres_url, created.id) as (blocker, transaction):
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.UpdateAccount(
                    account_pb2.UpdateAccountRequest(
                        account=account_pb2.Account(id=created.id, display_name="Too late")
                    ),
                    timeout=0.5,
                )
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server gave up its lock wait: no backend of this database waits on a lock.
            assert await waits_on_lock(blocker, postgres_url, expected=False)
            await transaction.rollback()
        after = await stub.GetAccount(account_pb2.GetAccountRequest(id=created.id))
        assert after.display_name == "Before"
        assert after.etag == created.etag

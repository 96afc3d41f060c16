"""Request ids on real databases: expired keys are purged (by function and by the served job).
CreateServiceAccount's replayable secret: tests/integration/test_service_account_replay.py."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.server import build
from core import db
from core.clock import FrozenClock
from core.idempotency import RETENTION, IdempotencyKeyRow, SqlIdempotencyRepository, purge_expired_keys
from core.settings import Settings
from tests.support import asyncpg_dsn, cheap_passwords

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def add_keys(sessions: async_sessionmaker[AsyncSession], expired: int, live: int) -> None:
    """`expired` keys expired at NOW (the last exactly at NOW) and `live` keys that are not."""
    async with sessions() as session:
        for n in range(expired):
            expire = NOW - timedelta(minutes=n)
            session.add(key_row(f"old-{n}", expire))
        for n in range(live):
            session.add(key_row(f"new-{n}", NOW + timedelta(microseconds=1 + n)))
        await session.commit()


def key_row(key: str, expire: datetime) -> IdempotencyKeyRow:
    return IdempotencyKeyRow(
        scope="CreateAccount:test",
        key=key,
        fingerprint="f" * 64,
        response="{}",
        create_time=expire - RETENTION,
        expire_time=expire,
    )


async def keys_left(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        return sorted((await session.execute(select(IdempotencyKeyRow.key))).scalars())


async def test_purge_deletes_expired_keys_in_bounded_batches(engine: AsyncEngine) -> None:
    sessions = db.session_factory(engine)
    await add_keys(sessions, expired=5, live=2)

    async with sessions() as session:
        one_batch = await SqlIdempotencyRepository(session).purge_expired(NOW, limit=2)
        await session.commit()
    assert one_batch == 2
    assert len(await keys_left(sessions)) == 5

    assert await purge_expired_keys(sessions, NOW, batch_size=2) == 3
    assert await keys_left(sessions) == ["new-0", "new-1"]
    assert await purge_expired_keys(sessions, NOW, batch_size=2) == 0


async def someone_waits_on_a_lock(url: str) -> bool:
    """Poll (bounded, 5 s) until a backend of this database waits on a lock."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for _ in range(500):
            waiting = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = $1",
                url.rsplit("/", 1)[-1],
            )
            if waiting:
                return True
            await asyncio.sleep(0.01)
        return False
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_purge_keeps_a_key_taken_over_while_it_waited(
    postgres_settings: Settings, postgres_clean: None
) -> None:
    engine = db.create_engine(postgres_settings)
    sessions = db.session_factory(engine)
    try:
        await add_keys(sessions, expired=1, live=0)
        async with sessions() as claimer:
            # A new request reuses the expired key; before it commits, a purge picks that key.
            assert await SqlIdempotencyRepository(claimer).claim("CreateAccount:test", "old-0", "a" * 64, NOW)
            purge = asyncio.create_task(purge_expired_keys(sessions, NOW))
            assert await someone_waits_on_a_lock(postgres_settings.effective_database_url)
            await claimer.commit()
        assert await asyncio.wait_for(purge, timeout=10) == 0
        assert await keys_left(sessions) == ["old-0"]
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("first_commits", [True, False], ids=["commits", "rolls-back"])
async def test_a_duplicate_claim_waits_for_the_first_and_follows_its_outcome(
    postgres_settings: Settings, postgres_clean: None, first_commits: bool
) -> None:
    engine = db.create_engine(postgres_settings)
    sessions = db.session_factory(engine)
    try:
        async with sessions() as first, sessions() as second:
            assert await SqlIdempotencyRepository(first).claim("CreateAccount:test", "k", "a" * 64, NOW)
            duplicate = asyncio.create_task(
                SqlIdempotencyRepository(second).claim("CreateAccount:test", "k", "a" * 64, NOW)
            )
            assert await someone_waits_on_a_lock(postgres_settings.effective_database_url)
            assert not duplicate.done()
            await (first.commit() if first_commits else first.rollback())
            # Taken by the first: refused. Given up by the first: the duplicate's, to execute.
            assert await asyncio.wait_for(duplicate, timeout=10) is not first_commits
    finally:
        await engine.dispose()


def served(settings: Settings, interval: float) -> Settings:
    return settings.model_copy(update={"idempotency_purge_interval_seconds": interval})


async def test_served_app_purges_expired_keys_until_stopped(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = await build(served(settings, 0.01), clock=FrozenClock(NOW), passwords=cheap_passwords())
    sessions = app.components.platform.writers
    await add_keys(sessions, expired=3, live=1)
    assert app.purger is not None
    with caplog.at_level(logging.INFO, logger="tally.idempotency"):
        await app.start()
        try:
            # A second pass proves the job goes on after its first, on its interval.
            await asyncio.wait_for(app.purger.wait_for_passes(2), timeout=10)
            assert await keys_left(sessions) == ["new-0"]
        finally:
            await app.stop(grace=0)
    assert "purged 3 expired request ids" in caplog.messages
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "purge-expired-request-ids"]


async def test_zero_interval_serves_without_the_job(settings: Settings) -> None:
    app = await build(served(settings, 0), passwords=cheap_passwords())
    await app.start()
    try:
        assert app.purger is None
        assert not [task for task in asyncio.all_tasks() if task.get_name() == "purge-expired-request-ids"]
    finally:
        await app.stop(grace=0)

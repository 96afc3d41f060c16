"""Work claims on SQLite and PostgreSQL, with workers racing for the same rows."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Column, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core import db
from core.claims import Claimable, Key, WorkQueue, new_worker_id
from core.db import UtcDateTime
from core.settings import Settings

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


class _TestBase(DeclarativeBase):
    """Metadata of its own: the migrations refuse tables that no module declares."""

    metadata = MetaData()


class Job(Claimable, _TestBase):
    __tablename__ = "test_claim_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)


QUEUE = WorkQueue.of(Job)


@asynccontextmanager
async def job_table(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with engine.begin() as connection:
        await connection.run_sync(_TestBase.metadata.create_all)
    try:
        yield db.session_factory(engine)
    finally:
        async with engine.begin() as connection:
            await connection.run_sync(_TestBase.metadata.drop_all)


@pytest.fixture
async def sessions(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with job_table(engine) as factory:
        yield factory


@pytest.fixture
async def pg_sessions(postgres_settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = db.create_engine(postgres_settings)
    try:
        async with job_table(engine) as factory:
            yield factory
    finally:
        await engine.dispose()


async def add_jobs(sessions: async_sessionmaker[AsyncSession], due: dict[str, datetime | None]) -> None:
    async with sessions() as session:
        await session.execute(insert(Job), [{"id": key, "due_time": when} for key, when in due.items()])
        await session.commit()


async def claim(
    sessions: async_sessionmaker[AsyncSession], worker: str, *, now: datetime = T0, limit: int = 10
) -> list[str]:
    """One claim in a transaction of its own, committed: the way a worker claims."""
    async with sessions() as session:
        rows = await QUEUE.claim(session, worker, now=now, lease=LEASE, limit=limit)
        await session.commit()
    return [row.id for row in rows]


def keys(*ids: str) -> list[Key]:
    return [(job_id,) for job_id in ids]


async def job(sessions: async_sessionmaker[AsyncSession], job_id: str) -> Job:
    async with sessions() as session:
        found = await session.get(Job, job_id)
    assert found is not None
    return found


async def test_claims_due_rows_oldest_first_up_to_the_limit(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add_jobs(
        sessions,
        {
            "late": T0 - timedelta(minutes=1),
            "early": T0 - timedelta(hours=1),
            "now": T0,
            "future": T0 + timedelta(seconds=1),
            "done": None,
        },
    )
    assert await claim(sessions, "w1", limit=2) == ["early", "late"]
    assert await claim(sessions, "w2", limit=10) == ["now"]
    assert await claim(sessions, "w3") == []

    claimed = await job(sessions, "early")
    assert claimed.claimed_by == "w1" and claimed.lease_until == T0 + LEASE


async def test_a_crashed_workers_rows_come_back_when_its_lease_ends(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add_jobs(sessions, {f"j{n}": T0 for n in range(5)})
    assert len(await claim(sessions, "crashed")) == 5  # and then it is never heard of again

    just_before = T0 + LEASE - timedelta(microseconds=1)
    assert await claim(sessions, "rescuer", now=just_before) == []
    assert sorted(await claim(sessions, "rescuer", now=T0 + LEASE)) == [f"j{n}" for n in range(5)]

    async with sessions() as session:  # the old worker wakes up: its claim is gone
        assert await QUEUE.complete(session, "crashed", keys("j0", "j1")) == 0
        assert await QUEUE.complete(session, "rescuer", keys("j0", "j1")) == 2
        await session.commit()
    assert (await job(sessions, "j2")).claimed_by == "rescuer"


async def test_complete_release_and_renew(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add_jobs(sessions, {"a": T0, "b": T0, "c": T0, "d": T0})
    assert sorted(await claim(sessions, "w")) == ["a", "b", "c", "d"]
    hour, two_hours = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    async with sessions() as session:
        assert await QUEUE.complete(session, "w", keys("a")) == 1  # done for good
        assert await QUEUE.complete(session, "w", keys("b"), next_due=hour) == 1  # recurring work
        assert await QUEUE.release(session, "w", keys("c")) == 1  # given back, due at once
        assert await QUEUE.renew(session, "w", keys("d"), until=T0 + 3 * LEASE) == 1
        assert await QUEUE.release(session, "someone else", keys("d")) == 0
        assert await QUEUE.complete(session, "w", []) == 0
        await session.commit()
    assert (await job(sessions, "a")).due_time is None

    assert await claim(sessions, "x", now=T0) == ["c"]
    async with sessions() as session:
        assert await QUEUE.complete(session, "x", keys("c")) == 1
        await session.commit()
    assert await claim(sessions, "x", now=T0 + 2 * LEASE) == []  # d's renewed lease holds
    assert await claim(sessions, "z", now=T0 + 3 * LEASE) == ["d"]
    async with sessions() as session:  # given back with a back-off
        assert await QUEUE.release(session, "z", keys("d"), due=two_hours) == 1
        await session.commit()
    assert await claim(sessions, "y", now=hour) == ["b"]
    async with sessions() as session:
        assert await QUEUE.complete(session, "y", keys("b")) == 1
        await session.commit()
    assert await claim(sessions, "y", now=two_hours - timedelta(seconds=1)) == []
    assert await claim(sessions, "y", now=two_hours) == ["d"]


async def test_a_claim_that_rolls_back_leaves_the_rows_due(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await add_jobs(sessions, {"a": T0, "b": T0})
    async with sessions() as session:
        assert len(await QUEUE.claim(session, "w1", now=T0, lease=LEASE, limit=10)) == 2
        # no commit: the worker died inside its claim transaction
    assert sorted(await claim(sessions, "w2")) == ["a", "b"]


def test_a_table_without_a_primary_key_is_refused() -> None:
    table = Table(
        "no_key",
        MetaData(),
        Column("due_time", UtcDateTime),
        Column("claimed_by", String(64)),
        Column("lease_until", UtcDateTime),
    )
    with pytest.raises(ValueError, match="primary key"):
        WorkQueue.of(table)


async def test_claim_arguments_are_checked(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        with pytest.raises(ValueError, match="limit"):
            await QUEUE.claim(session, "w", now=T0, lease=LEASE, limit=0)
        with pytest.raises(ValueError, match="worker id"):
            await QUEUE.claim(session, "", now=T0, lease=LEASE, limit=1)
        with pytest.raises(ValueError, match="lease"):
            await QUEUE.claim(session, "w", now=T0, lease=timedelta(0), limit=1)


def test_worker_ids_are_unique_and_fit() -> None:
    first, second = new_worker_id("invoice-finalizer"), new_worker_id("invoice-finalizer")
    assert first != second and first.startswith("invoice-finalizer-")
    assert len(new_worker_id("x" * 100)) <= 64


async def test_racing_workers_claim_every_row_exactly_once(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """Workers loop claim-commit concurrently until nothing is due: no row twice, none left."""
    total = 500 if engine.dialect.name == "postgresql" else 200
    await add_jobs(sessions, {f"j{n:03d}": T0 + timedelta(microseconds=n) for n in range(total)})
    claimed: dict[str, list[str]] = {}

    async def worker(name: str) -> None:
        mine = claimed.setdefault(name, [])
        while batch := await claim(sessions, name, now=T0 + timedelta(seconds=1), limit=7):
            mine.extend(batch)
            await asyncio.sleep(0)  # let the others in between batches, as real work would

    await asyncio.gather(*(worker(f"w{i}") for i in range(4)))

    counts = Counter(job_id for batch in claimed.values() for job_id in batch)
    assert [job_id for job_id, n in counts.items() if n > 1] == [], "claimed twice"
    assert len(counts) == total, "rows left unclaimed"
    assert sum(1 for batch in claimed.values() if batch) > 1, "only one worker got any work"
    async with sessions() as session:
        by_worker = dict(
            (await session.execute(select(Job.claimed_by, func.count()).group_by(Job.claimed_by))).all()
        )
    assert by_worker == {name: len(batch) for name, batch in claimed.items() if batch}


@pytest.mark.postgres
async def test_postgres_skips_rows_another_claim_holds_instead_of_waiting(
    pg_sessions: async_sessionmaker[AsyncSession],
) -> None:
    sessions = pg_sessions
    await add_jobs(sessions, {f"j{n}": T0 + timedelta(seconds=n) for n in range(6)})
    async with sessions() as holding:
        held = await QUEUE.claim(holding, "slow", now=T0 + LEASE, lease=LEASE, limit=3)
        assert [row.id for row in held] == ["j0", "j1", "j2"]
        # Not committed: the three rows are locked. Another claim must take the others at once.
        others = await asyncio.wait_for(claim(sessions, "fast", now=T0 + LEASE, limit=10), timeout=10)
        assert others == ["j3", "j4", "j5"]
        await holding.rollback()
    assert await claim(sessions, "fast", now=T0 + LEASE, limit=10) == ["j0", "j1", "j2"]

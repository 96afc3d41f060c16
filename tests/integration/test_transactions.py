"""After-commit callbacks, the snapshot reader and batched inserts, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.server import build_components
from core import db
from core.audit import AuditEventRow
from core.idempotency import IdempotencyKeyRow
from core.outbox import OutboxEventRow
from core.settings import Settings

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def key_row(key: str) -> IdempotencyKeyRow:
    return IdempotencyKeyRow(
        scope="Test", key=key, fingerprint="f" * 64, response=None, create_time=T0, expire_time=T0
    )


async def count_keys(engine: AsyncEngine) -> int:
    """Counted on a connection of its own, outside any unit of work under test."""
    async with engine.connect() as connection:
        return int(
            (await connection.execute(select(func.count()).select_from(IdempotencyKeyRow))).scalar_one()
        )


def unit_of_work(engine: AsyncEngine) -> db.UnitOfWork:
    return db.UnitOfWork(db.session_factory(engine))


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[tuple[str, bool, int]]]:
    """(statement, executemany?, parameter sets) for every statement sent to the driver."""
    seen: list[tuple[str, bool, int]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, many: bool) -> None:
        seen.append((statement, many, len(params) if many else 1))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


# after_commit


async def test_callbacks_run_in_order_once_the_commit_is_visible(engine: AsyncEngine) -> None:
    calls: list[object] = []

    async def count_from_outside() -> None:
        calls.append(("rows seen by another connection", await count_keys(engine)))

    async with unit_of_work(engine) as uow:
        uow.session.add(key_row("k1"))
        uow.after_commit(lambda: calls.append("sync first"))
        uow.after_commit(count_from_outside)
        uow.after_commit(lambda: calls.append("sync last"))
        assert calls == []
        await uow.commit()
        assert calls == ["sync first", ("rows seen by another connection", 1), "sync last"]
    assert len(calls) == 3  # leaving the block runs nothing again


async def test_callbacks_never_run_without_a_commit(engine: AsyncEngine) -> None:
    calls: list[str] = []
    async with unit_of_work(engine) as uow:
        uow.session.add(key_row("k1"))
        await uow.session.flush()
        uow.after_commit(lambda: calls.append("ran"))
    assert calls == []
    assert await count_keys(engine) == 0


async def test_callbacks_never_run_when_the_block_raises(engine: AsyncEngine) -> None:
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        async with unit_of_work(engine) as uow:
            uow.session.add(key_row("k1"))
            uow.after_commit(lambda: calls.append("ran"))
            raise RuntimeError("boom")
    assert calls == []
    assert await count_keys(engine) == 0


async def test_callbacks_never_run_when_the_commit_itself_fails(engine: AsyncEngine) -> None:
    async with unit_of_work(engine) as uow:
        uow.session.add(key_row("taken"))
        await uow.commit()
    calls: list[str] = []
    with pytest.raises(IntegrityError):
        async with unit_of_work(engine) as uow:
            uow.session.add(key_row("taken"))  # flushed by commit(): the duplicate fails there
            uow.after_commit(lambda: calls.append("ran"))
            await uow.commit()
    assert calls == []


# last_write


async def test_last_writes_run_in_order_after_the_others_and_before_the_events(engine: AsyncEngine) -> None:
    async with unit_of_work(engine) as uow:
        uow.session.add(key_row("first"))
        await uow.session.flush()

        async def write(key: str) -> None:
            uow.session.add(key_row(key))
            await uow.session.flush()
            uow.emit("test.written", ("test", key), {"key": key})  # still goes out with the commit

        async def last() -> None:
            await write("last")

        async def second_last() -> None:
            await write("second")
            uow.last_write(last)  # registered by a step: it runs too, after it

        uow.last_write(second_last)
        with statements(engine) as seen:
            await uow.commit()
    # The steps' two rows, then the events (one statement, PostgreSQL's led by its lock's CTE).
    writes = ["outbox" if "outbox_events" in sql else sql.split("(")[0].strip() for sql, _m, _c in seen]
    writes = [write for write in writes if write.startswith("INSERT") or write == "outbox"]
    assert writes == ["INSERT INTO idempotency_keys", "INSERT INTO idempotency_keys", "outbox"]
    async with engine.connect() as connection:
        stored = (await connection.execute(select(IdempotencyKeyRow.key))).scalars().all()
        events = (
            (await connection.execute(select(OutboxEventRow.resource_id).order_by(OutboxEventRow.position)))
            .scalars()
            .all()
        )
    assert sorted(stored) == ["first", "last", "second"]
    assert list(events) == ["second", "last"]


async def test_last_writes_are_dropped_with_a_rollback(engine: AsyncEngine) -> None:
    calls: list[str] = []

    async def step() -> None:
        calls.append("ran")

    with pytest.raises(RuntimeError, match="boom"):
        async with unit_of_work(engine) as uow:
            uow.session.add(key_row("k1"))
            uow.last_write(step)
            raise RuntimeError("boom")
    assert calls == []
    assert await count_keys(engine) == 0


async def test_a_commit_around_the_unit_of_work_is_refused_while_a_last_write_is_pending(
    engine: AsyncEngine,
) -> None:
    async def step() -> None:
        uow.session.add(key_row("numbered"))

    async with unit_of_work(engine) as uow:
        uow.session.add(key_row("k1"))
        uow.last_write(step)
        with pytest.raises(RuntimeError, match="last writes pending"):
            await uow.session.commit()  # would commit k1 without the step's write
    assert await count_keys(engine) == 0


async def test_a_failing_callback_is_logged_and_the_commit_stands(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def broken() -> None:
        raise ValueError("cache is down")

    async with unit_of_work(engine) as uow:
        uow.session.add(key_row("k1"))
        uow.after_commit(lambda: calls.append("before"))
        uow.after_commit(broken)
        uow.after_commit(lambda: 1 / 0)  # type: ignore[arg-type, return-value]
        uow.after_commit(lambda: calls.append("after"))
        with caplog.at_level(logging.ERROR, logger="tally.db"):
            await uow.commit()  # does not raise

    assert calls == ["before", "after"]
    assert await count_keys(engine) == 1
    failures = [r for r in caplog.records if r.name == "tally.db"]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)
    assert [type(r.exc_info[1]) for r in failures if r.exc_info] == [ValueError, ZeroDivisionError]


async def test_callbacks_belong_to_the_transaction_they_were_registered_in(engine: AsyncEngine) -> None:
    calls: list[str] = []
    async with unit_of_work(engine) as uow:
        uow.after_commit(lambda: calls.append("first"))
        await uow.commit()
        uow.after_commit(lambda: calls.append("second, never committed"))
    assert calls == ["first"]
    async with unit_of_work(engine) as uow:  # a new block starts with no callbacks
        await uow.commit()
    assert calls == ["first"]


# The snapshot reader


async def test_a_snapshot_sees_one_state_while_the_autocommit_reader_sees_each_commit(
    engine: AsyncEngine,
) -> None:
    snapshots = db.session_factory(db.snapshot_reader(engine))
    readers = db.session_factory(db.read_only(engine))
    count = select(func.count()).select_from(IdempotencyKeyRow)
    async with snapshots() as snapshot, readers() as reader:
        assert (await snapshot.execute(count)).scalar_one() == 0
        assert (await reader.execute(count)).scalar_one() == 0
        async with unit_of_work(engine) as uow:
            uow.session.add(key_row("k1"))
            await uow.commit()
        assert (await snapshot.execute(count)).scalar_one() == 0
        assert (await reader.execute(count)).scalar_one() == 1
    async with snapshots() as snapshot:  # a new snapshot reader sees the new state
        assert (await snapshot.execute(count)).scalar_one() == 1


async def test_the_platform_hands_out_snapshot_readers(settings: Settings) -> None:
    components = await build_components(settings)
    try:
        platform = components.platform
        count = select(func.count()).select_from(IdempotencyKeyRow)
        async with platform.snapshots() as snapshot:
            assert (await snapshot.execute(count)).scalar_one() == 0
            async with platform.writers() as writer:
                writer.add(key_row("k1"))
                await writer.commit()
            assert (await snapshot.execute(count)).scalar_one() == 0
        async with platform.readers() as reader:
            assert (await reader.execute(count)).scalar_one() == 1
    finally:
        await components.close()


@pytest.mark.postgres
async def test_a_snapshot_reader_refuses_writes_on_postgres(postgres_settings: Settings) -> None:
    engine = db.create_engine(postgres_settings)
    try:
        async with db.session_factory(db.snapshot_reader(engine))() as snapshot:
            level = (await snapshot.execute(select(func.current_setting("transaction_isolation")))).scalar()
            assert level == "repeatable read"
            snapshot.add(key_row("k1"))
            with pytest.raises(DBAPIError, match="read-only transaction"):
                await snapshot.flush()
    finally:
        await engine.dispose()


# N rows, one statement


def audit_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"evt_{i:04d}",
            "time": T0,
            "actor": "test",
            "actor_role": "admin",
            "method": "/test/Bulk",
            "request_id": "",
            "resource_type": "account",
            "resource_id": f"acct_{i}",
            "action": "create",
            "changes": {"n": i},
        }
        for i in range(n)
    ]


async def count_audit(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(AuditEventRow))).scalar_one())


async def test_adding_a_hundred_rows_is_one_statement(engine: AsyncEngine) -> None:
    async with db.session_factory(engine)() as session:
        await session.connection()  # BEGIN (a statement of its own on SQLite) before counting
        with statements(engine) as seen:
            await db.add_all_rows(session, AuditEventRow, audit_rows(100))
        assert [(many, sets) for _, many, sets in seen] == [(True, 100)]
        assert seen[0][0].startswith("INSERT INTO audit_events")
        await session.commit()
        assert await count_audit(session) == 100
        stored = await session.get(AuditEventRow, "evt_0042")
        assert stored is not None and stored.changes == {"n": 42} and stored.time == T0


async def test_one_flush_per_added_row_is_what_the_helper_saves(engine: AsyncEngine) -> None:
    """The counter sees one statement per flushed row: the pattern add_all_rows replaces."""
    async with db.session_factory(engine)() as session:
        await session.connection()
        with statements(engine) as seen:
            for row in audit_rows(10):
                session.add(AuditEventRow(**row))
                await session.flush()
        assert len(seen) == 10


async def test_adding_no_rows_sends_nothing(engine: AsyncEngine) -> None:
    async with db.session_factory(engine)() as session:
        await session.connection()
        with statements(engine) as seen:
            await db.add_all_rows(session, AuditEventRow, [])
        assert seen == []

"""The outbox on SQLite and PostgreSQL: events commit with their change, and readers never skip one."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from core import db, outbox
from core.clock import FrozenClock
from core.idempotency import IdempotencyKeyRow
from core.outbox import OutboxEvent

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def unit_of_work(engine: AsyncEngine, clock: FrozenClock | None = None) -> db.UnitOfWork:
    return db.UnitOfWork(db.session_factory(engine), clock=clock or FrozenClock(T0))


async def read(engine: AsyncEngine, after: int = 0, limit: int = 1000) -> list[OutboxEvent]:
    async with db.session_factory(db.read_only(engine))() as session:
        return await outbox.read_events(session, after, limit)


async def test_an_emitted_event_commits_with_the_change(engine: AsyncEngine) -> None:
    async with unit_of_work(engine) as uow:
        uow.session.add(
            IdempotencyKeyRow(
                scope="s", key="k", fingerprint="f" * 64, response=None, create_time=T0, expire_time=T0
            )
        )
        uow.emit("account.created", ("account", "acct_1"), {"display_name": "Acme", "n": 1})
        uow.emit("account.updated", ("account", "acct_1"), {"changes": {"n": [1, 2]}})
        await uow.commit()

    first, second = await read(engine)
    assert (first.type, first.resource_type, first.resource_id) == ("account.created", "account", "acct_1")
    assert first.payload == {"display_name": "Acme", "n": 1}
    assert second.payload == {"changes": {"n": [1, 2]}}
    assert first.position < second.position  # emit order within a transaction
    assert first.create_time == T0
    assert re.fullmatch(r"oev_[0-9a-z]{26}", first.id) and first.id != second.id
    assert first.trace_id is None  # no span was active


async def test_no_commit_no_event(engine: AsyncEngine) -> None:
    async with unit_of_work(engine) as uow:
        uow.emit("account.created", ("account", "acct_1"), {})
    with pytest.raises(RuntimeError):
        async with unit_of_work(engine) as uow:
            uow.emit("account.created", ("account", "acct_2"), {})
            await uow.session.flush()
            raise RuntimeError("the use case failed")
    assert await read(engine) == []


async def test_events_carry_the_trace_id_of_the_call(engine: AsyncEngine) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("CreateAccount") as span:
        async with unit_of_work(engine) as uow:
            uow.emit("account.created", ("account", "acct_1"), {})
            await uow.commit()
    (stored,) = await read(engine)
    assert stored.trace_id == f"{span.get_span_context().trace_id:032x}"


@pytest.mark.parametrize(
    ("event_type", "resource", "payload", "error"),
    [
        ("AccountCreated", ("account", "acct_1"), {}, ValueError),
        ("account", ("account", "acct_1"), {}, ValueError),
        ("account.created", ("", "acct_1"), {}, ValueError),
        ("account.created", ("account", "x" * 65), {}, ValueError),
        ("account.created", ("account", "acct_1"), {"when": datetime(2026, 1, 1, tzinfo=UTC)}, TypeError),
        ("account.created", ("account", "acct_1"), {"ratio": float("nan")}, ValueError),
        ("account.created", ("account", "acct_1"), ["not", "a", "mapping"], TypeError),
    ],
)
def test_bad_events_fail_at_emit(
    event_type: str, resource: tuple[str, str], payload: object, error: type
) -> None:
    with pytest.raises(error):
        outbox.pending_event(event_type, resource, payload, T0)  # type: ignore[arg-type]


async def test_readers_page_with_a_cursor_across_gaps(engine: AsyncEngine) -> None:
    for n in range(5):
        async with unit_of_work(engine) as uow:
            uow.emit("thing.happened", ("thing", f"t{n}"), {"n": n})
            if n % 2:
                await uow.session.flush()
                continue  # odd transactions roll back (on PostgreSQL: a hole in the positions)
            await uow.commit()
    async with unit_of_work(engine) as uow:
        uow.emit("thing.happened", ("thing", "t5"), {"n": 5})
        await uow.commit()

    seen: list[int] = []
    cursor = 0
    while page := await read(engine, cursor, limit=2):
        seen.extend(e.payload["n"] for e in page)
        cursor = page[-1].position
    assert seen == [0, 2, 4, 5]
    with pytest.raises(ValueError, match="limit"):
        await read(engine, 0, limit=0)


async def test_a_hundred_events_are_one_statement(engine: AsyncEngine) -> None:
    seen: list[tuple[str, int]] = []

    def record(_c: object, _cur: object, statement: str, params: object, _ctx: object, many: bool) -> None:
        seen.append((statement, len(params) if many else 1))  # type: ignore[arg-type]

    async with unit_of_work(engine) as uow:
        await uow.session.connection()  # BEGIN first (a statement of its own on SQLite)
        for n in range(100):
            uow.emit("thing.happened", ("thing", f"t{n}"), {"n": n})
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            await uow.commit()
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert len(seen) == 1, seen
    assert "INSERT INTO outbox_events" in seen[0][0] and seen[0][1] == 100
    assert [e.payload["n"] for e in await read(engine)] == list(range(100))


# PostgreSQL: positions are drawn in commit order, so a cursor never passes an event still in flight.


async def waiting_on_advisory_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        waiting = await connection.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
        return int(waiting.scalar_one()) > 0


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll a condition until it holds (nothing signals that another connection waits on a lock)."""
    async with asyncio.timeout(10):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.mark.postgres
async def test_a_reader_never_moves_past_an_event_still_in_flight(pg_engine: AsyncEngine) -> None:
    """A draws a position and stays open; B emits and commits. Whatever B does, a reader in
    between must not see anything past the cursor that A's event could land behind."""
    cursor = 0
    early = db.session_factory(pg_engine)()
    try:
        # A: the unit of work's write path, held open between the INSERT and the COMMIT.
        await outbox.write_events(early, [outbox.pending_event("a.happened", ("thing", "a"), {}, T0)])
        (a_position,) = (await early.execute(select(outbox.OutboxEventRow.position))).scalars().all()

        async def commit_b() -> None:
            async with unit_of_work(pg_engine) as uow:
                uow.emit("b.happened", ("thing", "b"), {})
                await uow.commit()

        b = asyncio.create_task(commit_b())

        async def b_done_or_blocked() -> bool:
            return b.done() or await waiting_on_advisory_lock(pg_engine)

        await until(b_done_or_blocked)
        between = await read(pg_engine, cursor)
        assert between == [], f"the reader moved past A's in-flight position {a_position}: {between}"
        assert not b.done(), "B committed while A (an earlier position) was still in flight"
        await early.commit()
    finally:
        await early.close()
    await b
    after = await read(pg_engine, cursor)
    assert [e.type for e in after] == ["a.happened", "b.happened"]
    assert after[0].position == a_position < after[1].position


@pytest.mark.postgres
async def test_a_tailing_reader_gets_every_committed_event_once_in_order(pg_engine: AsyncEngine) -> None:
    """Writers commit (and sometimes roll back) concurrently while a reader tails the outbox."""
    rng = random.Random(7)
    committed: set[str] = set()
    done = asyncio.Event()

    async def writer(name: str) -> None:
        for n in range(25):
            async with unit_of_work(pg_engine) as uow:
                emitted = [f"{name}-{n}-{k}" for k in range(rng.randint(1, 3))]
                for resource_id in emitted:
                    uow.emit("thing.happened", ("thing", resource_id), {})
                await asyncio.sleep(0)
                if rng.random() < 0.2:
                    continue  # rolled back
                await uow.commit()
                committed.update(emitted)

    got: list[OutboxEvent] = []

    async def reader() -> None:
        cursor = 0
        while True:
            finished = done.is_set()  # read once more after the writers are done
            page = await read(pg_engine, cursor, limit=7)
            got.extend(page)
            cursor = page[-1].position if page else cursor
            if finished and not page:
                return
            await asyncio.sleep(0)

    tail = asyncio.create_task(reader())
    await asyncio.gather(*(writer(f"w{i}") for i in range(4)))
    done.set()
    await tail

    positions = [e.position for e in got]
    assert positions == sorted(set(positions)), "out of order or delivered twice"
    assert {e.resource_id for e in got} == committed
    assert len(committed) > 50

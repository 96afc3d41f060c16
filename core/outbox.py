"""The outbox: events written in the same transaction as the change they describe.

A use case calls `uow.emit("invoice.finalized", ("invoice", invoice.id), {...})`; the
event row commits with the change or not at all, so a reader (webhook delivery, invoice
jobs) never sees an event without its change, nor a change without its event, and a
crash between the two cannot happen. Readers keep a cursor and call
`read_events(session, after_position, limit)`.

Positions, and why readers can trust them
-----------------------------------------
A reader asks for `position > cursor ORDER BY position` and moves its cursor to the last
position it got. That is only safe if no event can ever commit with a position at or below
a position the reader has already seen. A plain sequence does not give that: its values
are taken when a row is inserted, not when its transaction commits. Transaction A takes 6,
transaction B takes 7 and commits first; a reader then sees 7, moves its cursor to 7, and
when A commits, 6 is behind the cursor and never delivered.

Filtering rows by transaction id against the oldest running transaction
(`pg_snapshot_xmin(pg_current_snapshot())`) does not close the hole on its own: a
transaction that got its id early (its first write) can still draw its position after a
younger transaction did, and commit while the younger one is running. Ordering by
(transaction id, position) would be safe, but it is not commit order: when B waits on a
row lock held by A and writes after A, B's event may still sort first, so a subscriber
would see an account's second update before its first.

So positions are drawn in commit order. On PostgreSQL each transaction that writes
events takes one transaction-scoped advisory lock, in the same statement and before the
identity column draws a position, and holds it until its commit is visible (PostgreSQL
releases locks after marking the transaction committed). A transaction drawing a position
therefore does so after every earlier holder has committed or rolled back: the committed
positions are always a prefix, with holes only where a transaction rolled back. The unit
of work writes its events last, as one statement right before COMMIT, so the lock is held
for that statement and the commit, not for the use case. Transactions that emit nothing
never take it. The cost: transactions that emit events commit one after another, so their
commit rate is about what one connection achieves (`bench/outbox.py`: on the 2-core
development machine, 8 workers commit a third to a half as often with one event each as
without events). When that becomes the limit, take one lock per stream (say, by account hash)
and keep a position per stream: order then holds within a stream, which is what
subscribers rely on.

On SQLite every write transaction holds the database's single write lock from BEGIN
IMMEDIATE to COMMIT (core/db.py), so positions are in commit order already; the column
is AUTOINCREMENT so a position is never reused even after the newest rows are deleted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Identity,
    Index,
    Integer,
    String,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core import ids
from core.db import Base, UtcDateTime
from core.request_context import current_trace_id

ID_PREFIX = "oev"  # "evt" is taken by audit events
MAX_EVENT_TYPE = 64
MAX_RESOURCE_TYPE = 40
MAX_RESOURCE_ID = 64
ACCOUNT_RESOURCE_TYPE = "account"
# Advisory lock key that orders the drawing of positions (app.migrate uses ...001).
_ORDER_LOCK = 7_246_551_002
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class OutboxEventRow(Base):
    __tablename__ = "outbox_events"
    __table_args__ = (
        # An account's events in position order: a customer's watch or listing reads only its own.
        Index("ix_outbox_events_account_id_position", "account_id", "position"),
        # One resource's events (ids are unique across types): ListEvents and WatchEvents by resource.
        Index("ix_outbox_events_resource_id_position", "resource_id", "position"),
        {"sqlite_autoincrement": True},
    )

    # SQLite assigns positions only to a column declared exactly INTEGER PRIMARY KEY.
    position: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(MAX_EVENT_TYPE))
    resource_type: Mapped[str] = mapped_column(String(MAX_RESOURCE_TYPE))
    resource_id: Mapped[str] = mapped_column(String(MAX_RESOURCE_ID))
    # account_of(...) when written: "" for events of no account (plans, meters, clocks).
    account_id: Mapped[str] = mapped_column(String(MAX_RESOURCE_ID), server_default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    trace_id: Mapped[str | None] = mapped_column(String(32))


def account_of(resource_type: str, resource_id: str, payload: Mapping[str, Any]) -> str:
    """The account an event belongs to: the resource itself when it is an account, else the
    payload's `account_id` (invoices, credit notes, subscriptions carry it); "" when neither.
    Stored with the event (the `account_id` column), so readers filter on it in SQL."""
    if resource_type == ACCOUNT_RESOURCE_TYPE:
        return resource_id
    found = payload.get("account_id")
    return found if isinstance(found, str) and len(found) <= MAX_RESOURCE_ID else ""


@dataclass(frozen=True)
class PendingEvent:
    """An event emitted in a transaction that has not committed yet (no position)."""

    id: str
    type: str
    resource_type: str
    resource_id: str
    account_id: str
    payload: Mapping[str, Any]
    create_time: datetime
    trace_id: str | None


@dataclass(frozen=True)
class OutboxEvent:
    position: int
    id: str
    type: str
    resource_type: str
    resource_id: str
    account_id: str
    payload: Mapping[str, Any]
    create_time: datetime
    trace_id: str | None


def pending_event(
    event_type: str, resource: tuple[str, str], payload: Mapping[str, Any], time: datetime
) -> PendingEvent:
    """Check an event at `emit` time, where the mistake is made, not at commit.

    These are programming errors (callers are use cases, not clients), hence ValueError
    and TypeError rather than InvalidArgument.
    """
    if len(event_type) > MAX_EVENT_TYPE or not _EVENT_TYPE.fullmatch(event_type):
        raise ValueError(f"event type {event_type!r} must look like 'account.created'")
    resource_type, resource_id = resource
    if not 0 < len(resource_type) <= MAX_RESOURCE_TYPE or not 0 < len(resource_id) <= MAX_RESOURCE_ID:
        raise ValueError(f"resource {resource!r} must be (type of 1-40 chars, id of 1-64 chars)")
    if not isinstance(payload, Mapping):
        raise TypeError(f"an event payload is a mapping, not {type(payload).__name__}")
    # A copy through JSON: fails now on what JSON cannot hold, and later changes to the
    # caller's dict do not leak into the event.
    plain = json.loads(json.dumps(dict(payload), allow_nan=False))
    return PendingEvent(
        id=ids.new_id(ID_PREFIX),
        type=event_type,
        resource_type=resource_type,
        resource_id=resource_id,
        account_id=account_of(resource_type, resource_id, plain),
        payload=plain,
        create_time=time,
        trace_id=current_trace_id() or None,
    )


def _table() -> Table:
    return cast(Table, OutboxEventRow.__table__)


_COLUMNS = ("id", "type", "resource_type", "resource_id", "account_id", "payload", "create_time", "trace_id")


@functools.cache
def _postgres_insert() -> Any:
    """INSERT ... SELECT FROM a one-row CTE that takes the ordering lock.

    The identity column's nextval() is computed for the CTE's one row, so the lock is held
    before a position is drawn; one statement instead of a separate `SELECT pg_advisory_...`
    saves a round trip. Re-taking a held transaction lock (once per row) is a local no-op.
    """
    table = _table()
    key: ColumnElement[Any] = literal_column(
        str(_ORDER_LOCK)
    )  # inline, so each executemany row needs no extra parameter
    lock = select(func.pg_advisory_xact_lock(key).label("locked")).cte("outbox_order_lock")
    lock = lock.prefix_with("MATERIALIZED")
    values = [bindparam(name, type_=table.c[name].type) for name in _COLUMNS]
    return insert(table).from_select(list(_COLUMNS), select(*values).select_from(lock))


@functools.cache
def _sqlite_insert() -> Any:
    return insert(_table())


async def write_events(session: AsyncSession, events: list[PendingEvent]) -> None:
    """Insert `events` in one statement (one round trip), positions in commit order."""
    if not events:
        return
    rows = [{name: getattr(event, name) for name in _COLUMNS} for event in events]
    for row in rows:
        row["payload"] = dict(row["payload"])
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_postgres_insert(), rows)
    else:
        await session.execute(_sqlite_insert(), rows)


async def read_events(
    session: AsyncSession,
    after_position: int,
    limit: int,
    *,
    where: Sequence[ColumnElement[bool]] = (),
    through: int | None = None,
) -> list[OutboxEvent]:
    """Committed events with a position above `after_position` (and at most `through`, when
    given) that meet every condition in `where`, in position order.

    Safe to call from any reader at any time: whatever it returns, no event with a smaller
    position can commit later (see the module docstring), so the caller may move its cursor
    to the last position returned. Positions have holes (rolled-back transactions).
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    statement = select(OutboxEventRow).where(OutboxEventRow.position > after_position, *where)
    if through is not None:
        statement = statement.where(OutboxEventRow.position <= through)
    statement = statement.order_by(OutboxEventRow.position).limit(limit)
    rows = (await session.execute(statement)).scalars().all()
    return [
        OutboxEvent(
            position=row.position,
            id=row.id,
            type=row.type,
            resource_type=row.resource_type,
            resource_id=row.resource_id,
            account_id=row.account_id,
            payload=row.payload,
            create_time=row.create_time,
            trace_id=row.trace_id,
        )
        for row in rows
    ]


async def newest_position(session: AsyncSession) -> int:
    """The position of the newest committed event, 0 when there is none: a cursor at it sees
    only events that commit later (committed positions are a prefix, see the module docstring)."""
    statement = select(func.max(OutboxEventRow.position))
    return int((await session.execute(statement)).scalar() or 0)


class CommitSignal:
    """Tells this process's outbox readers that a transaction which wrote events has committed.

    The unit of work calls `committed()` right after such a commit (never after a rollback);
    a reader takes `next_commit()` BEFORE it reads, then waits on it: a commit that lands
    between its read and its wait has already set the event it holds, so none is missed.
    Commits of other processes are not seen here: readers keep polling as the fallback.
    One per engine's writers (core.db.session_factory), shared by every unit of work on them.
    """

    def __init__(self) -> None:
        self._next = asyncio.Event()

    def next_commit(self) -> asyncio.Event:
        """Set at the next commit that wrote events (or `committed()` call) after this call."""
        return self._next

    def committed(self) -> None:
        fired, self._next = self._next, asyncio.Event()
        fired.set()

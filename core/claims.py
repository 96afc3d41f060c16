"""Work claims: any number of workers (in any number of replicas) share the due rows of a table.

A table of work (invoices to finalize, webhooks to send) carries three columns, from the
`Claimable` mixin or named by the caller:

- `due_time`: when the row wants work; NULL when it wants none (done);
- `claimed_by`: the worker that claimed it last;
- `lease_until`: until when that claim holds. A row is due when `due_time <= now` and it
  has no live lease (`lease_until` is NULL or past), so the rows of a worker that crashed
  come back once its lease runs out, without anyone having to notice the crash.

A worker claims a batch in a short transaction of its own and commits, so the claim
outlives the transaction; then it does the work, which may call out over the network (no
transaction is open by then, see ARCHITECTURE.md); then it records the result with
`complete` or `release` in a new transaction. Each of those checks that the worker still
holds the claim: a worker that was too slow, whose lease ran out and whose rows went to
another worker, learns so (0 rows) instead of overwriting the other's claim. Work done
under a lease can be done twice (crash after the work, before `complete`), so it must be
idempotent or reconcilable: claims give at-least-once, never "at most once".

How claiming stays exclusive
----------------------------
PostgreSQL: the due rows are picked with `FOR UPDATE SKIP LOCKED` and updated in the same
statement. Rows another worker's claim has locked and not yet committed are skipped, not
waited for, so workers never queue behind each other; once that claim commits, the rows
have a live lease and are no longer due. A claim that rolls back releases its locks and
the rows are due again.

SQLite: one writer at a time. Writers open their transaction with BEGIN IMMEDIATE
(core/db.py), which takes the database's write lock before the first statement, so one
claim's pick-and-update runs, commits and releases the lock before the next claim starts:
the next one sees the leases just written. No row locks are needed, and the statement is
a plain `UPDATE ... WHERE key IN (SELECT ... LIMIT n) RETURNING ...`. Workers take turns
instead of working side by side, which is what one embedded process needs.

Time comes from the caller's clock (tests move it; leases expire without waiting). Across
replicas the clocks differ a little: keep leases far longer than any clock skew.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Row,
    String,
    Table,
    Update,
    and_,
    bindparam,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core import ids
from core.db import UtcDateTime

MAX_WORKER_ID = 64
Key = tuple[Any, ...]  # a row's primary key values, in the table's primary key order


class Claimable:
    """Mixin for a declarative model whose rows are claimed by workers (column convention)."""

    due_time: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(MAX_WORKER_ID))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)


def new_worker_id(name: str = "worker") -> str:
    """A worker id unique to this claim loop, so a restarted worker never passes for its
    former self (which would let it complete rows another worker has since claimed)."""
    return f"{name[:24]}-{ids.new_id('wrk')}"


@dataclass(frozen=True)
class WorkQueue:
    """The due rows of one table, and how to claim, complete and release them."""

    table: Table
    due_time: Column[Any]
    claimed_by: Column[Any]
    lease_until: Column[Any]

    @classmethod
    def of(
        cls,
        table: Table | Any,
        *,
        due_time: str = "due_time",
        claimed_by: str = "claimed_by",
        lease_until: str = "lease_until",
    ) -> WorkQueue:
        """The queue of `table` (a Table, or a declarative model) with these column names."""
        resolved: Table = table if isinstance(table, Table) else table.__table__
        if not resolved.primary_key.columns:
            raise ValueError(f"table {resolved.name} has no primary key to claim rows by")
        return cls(resolved, resolved.c[due_time], resolved.c[claimed_by], resolved.c[lease_until])

    @property
    def _key_columns(self) -> list[Column[Any]]:
        return list(self.table.primary_key.columns)

    def key_of(self, row: Row[Any]) -> Key:
        """The primary key of a claimed row, as `complete` and `release` take it."""
        mapping = row._mapping
        return tuple(mapping[column] for column in self._key_columns)

    def _is_due(self, now: datetime) -> ColumnElement[bool]:
        return and_(
            self.due_time.is_not(None),
            self.due_time <= now,
            or_(self.lease_until.is_(None), self.lease_until <= now),
        )

    async def claim(
        self,
        session: AsyncSession,
        worker: str,
        *,
        now: datetime,
        lease: timedelta,
        limit: int,
        where: ColumnElement[bool] | None = None,
    ) -> list[Row[Any]]:
        """Claim up to `limit` due rows, oldest due first, for `worker` until `now + lease`; only
        rows that also match `where`, when given.

        Runs one statement in the caller's transaction; the claim holds once the caller
        commits. Returns the claimed rows (every column), oldest due first.
        """
        if limit <= 0:
            raise ValueError("limit must be positive")
        if not 0 < len(worker) <= MAX_WORKER_ID:
            raise ValueError(f"worker id must be 1 to {MAX_WORKER_ID} characters")
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        keys = self._key_columns
        due = self._is_due(now) if where is None else and_(self._is_due(now), where)
        picked = select(*keys).where(due).order_by(self.due_time, *keys).limit(limit)
        claim = {self.claimed_by.name: worker, self.lease_until.name: now + lease}
        if session.get_bind().dialect.name == "postgresql":
            # A CTE runs once; `key IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` may be
            # planned as a join that re-runs the sub-select and claims more than n rows.
            chosen = picked.with_for_update(skip_locked=True).cte("claimable")
            match = and_(*(column == chosen.c[column.name] for column in keys))
            statement = update(self.table).where(match).values(claim)
        else:
            statement = update(self.table).where(tuple_(*keys).in_(picked)).values(claim)
        result = await session.execute(statement.returning(*self.table.c))
        return sorted(result.all(), key=lambda row: (row._mapping[self.due_time], self.key_of(row)))

    async def due_count(
        self, session: AsyncSession, *, now: datetime, where: ColumnElement[bool] | None = None
    ) -> int:
        """How many rows (matching `where`) are due and unclaimed at `now`."""
        due = self._is_due(now) if where is None else and_(self._is_due(now), where)
        counted = await session.scalar(select(func.count()).select_from(self.table).where(due))
        return int(counted or 0)

    async def complete(
        self, session: AsyncSession, worker: str, keys: Iterable[Key], *, next_due: datetime | None = None
    ) -> int:
        """The work on these rows is done: they want none (or more at `next_due`). Only rows
        `worker` still holds change; returns how many did."""
        values = {self.due_time.name: next_due, self.claimed_by.name: None, self.lease_until.name: None}
        return await self._update_owned(session, worker, keys, values)

    async def release(
        self, session: AsyncSession, worker: str, keys: Iterable[Key], *, due: datetime | None = None
    ) -> int:
        """Give these rows back undone, due again at once (or at `due`, to back off)."""
        values: dict[str, Any] = {self.claimed_by.name: None, self.lease_until.name: None}
        if due is not None:
            values[self.due_time.name] = due
        return await self._update_owned(session, worker, keys, values)

    async def renew(self, session: AsyncSession, worker: str, keys: Iterable[Key], *, until: datetime) -> int:
        """Extend the lease of rows still held by `worker` (long work heartbeats with this)."""
        return await self._update_owned(session, worker, keys, {self.lease_until.name: until})

    async def _update_owned(
        self, session: AsyncSession, worker: str, keys: Iterable[Key], values: dict[str, Any]
    ) -> int:
        wanted = list(keys)
        if not wanted:
            return 0
        parameters = {f"set_{name}": value for name, value in values.items()}
        parameters.update(keys=wanted, worker=worker)
        result = await session.execute(_owned_update(self, tuple(values)), parameters)
        return int(getattr(result, "rowcount", 0))


@functools.cache
def _owned_update(queue: WorkQueue, columns: tuple[str, ...]) -> Update:
    """UPDATE of `queue`'s rows held by a worker, setting `columns`, built once for each queue and
    set of columns (parameters keys, worker and set_<column>)."""
    key = tuple_(*queue._key_columns)
    return (
        update(queue.table)
        .where(key.in_(bindparam("keys", expanding=True)), queue.claimed_by == bindparam("worker"))
        .values({name: bindparam(f"set_{name}") for name in columns})
    )

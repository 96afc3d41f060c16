"""Database plumbing: engine, declarative base, column types, readers and the unit of work.

The unit of work owns one transaction: `async with uow:` opens it, the use case
calls `await uow.commit()`, and leaving the block without a commit rolls back.
Repositories receive the session and never commit. Side effects wait for the
commit (`uow.after_commit`) or travel in the same transaction (`uow.emit`, the
outbox in core/outbox.py). ARCHITECTURE.md has the rules around them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import DateTime, Insert, MetaData, Update, bindparam, event, insert, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.types import TypeDecorator

from core.clock import Clock, SystemClock
from core.errors import Aborted, InvalidArgument, TallyError, Unavailable
from core.settings import Settings

if TYPE_CHECKING:
    from core.cache import ReadCache
    from core.outbox import CommitSignal, PendingEvent

log = logging.getLogger("tally.db")

# A side effect for after the commit: a plain function, or a coroutine function.
AfterCommit = Callable[[], Awaitable[None] | None]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.effective_database_url
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    # No pool_pre_ping: it costs a round trip per checkout (measured: most of a GetAccount).
    # A connection found dead mid-call invalidates the pool and the call fails UNAVAILABLE,
    # which clients retry; pool_recycle retires connections before idle timeouts bite.
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_recycle=1800,
    )


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, for single-statement reads: no BEGIN/ROLLBACK round trips.

    Each statement sees the data committed when it starts, so two statements may see two
    different states; reads that must agree with each other use `snapshot_reader`.
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(tally_autocommit=True)
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def snapshot_reader(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, for reads spanning several statements that must see one snapshot
    (an invoice and its lines): every statement of the transaction sees the same data.

    PostgreSQL: REPEATABLE READ READ ONLY (the snapshot is taken at the first statement;
    DEFERRABLE is not needed, nothing here has to be serializable). SQLite: a deferred BEGIN;
    in WAL mode a read transaction keeps the snapshot of its first read until it ends, and
    it never blocks the writer.
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(tally_deferred=True)
    return engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE so concurrent writers queue instead of failing."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get("tally_autocommit", False):
            return  # no BEGIN: the driver is in autocommit mode, each statement stands alone
        connection.exec_driver_sql("BEGIN" if options.get("tally_deferred", False) else "BEGIN IMMEDIATE")


# SQLSTATEs that mean "the database cannot serve now", not "the request is wrong": connection
# exceptions (class 08), insufficient resources (53: disk full, out of memory, too many
# connections), and a server shutting down, crashed or still starting (57P01..57P03, seen
# during a restart or a failover). Retrying with backoff is the right answer to all of them.
_UNAVAILABLE_CLASSES = ("08", "53")
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03"})
# Serialization failure and deadlock: the transaction lost a race and may simply be run again.
_CONFLICT_STATES = frozenset({"40001", "40P01"})
# Data exceptions (22001 string too long, 22021 character not in repertoire, 22P05...): the
# request carried a value the database will not store, which the boundary should have refused.
_DATA_CLASS = "22"


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error, wrapped by SQLAlchemy or not (asyncpg's errors and
    SQLAlchemy's adaptation of them carry `.sqlstate`; the DBAPIError wrapper has `.orig`)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and len(state) == 5:
            return state
        orig = getattr(current, "orig", None)
        pending.extend([current.__cause__, orig if isinstance(orig, BaseException) else None])
    return None


def _is_outage(exc: BaseException) -> bool:
    """For errors without a SQLSTATE: True when the database could not be reached at all."""
    if isinstance(exc, DBAPIError):
        # sqlite3 has no SQLSTATE: "database is locked" (busy_timeout ran out), a full disk or an
        # I/O error are all OperationalError, and all worth a retry.
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    # A connection that failed before SQLAlchemy had one to wrap the error in: refused, reset,
    # a name that does not resolve, a connect timeout.
    return isinstance(exc, SqlTimeoutError | OSError | sqlite3.OperationalError)


def _unavailable() -> Unavailable:
    return Unavailable("the database is unavailable; retry with backoff", reason="DATABASE_UNAVAILABLE")


def classify(exc: BaseException | None) -> TallyError | None:
    """The error a database failure means for the caller, or None to let it be an internal one.

    The one place database errors are sorted: UNAVAILABLE for outages, ABORTED for a lost
    serialization race or a deadlock (both retryable), INVALID_ARGUMENT for a value the
    database refused to store. The last is logged as a bug, with its traceback: the text
    policy and the domain's length checks should have refused the value before any query.
    """
    if exc is None or isinstance(exc, TallyError):
        return None
    state = _sqlstate(exc)
    if state is None:
        return _unavailable() if _is_outage(exc) else None
    if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES:
        return _unavailable()
    if state in _CONFLICT_STATES:
        return Aborted(
            "the transaction conflicted with a concurrent one; retry", reason="TRANSACTION_CONFLICT"
        )
    if state[:2] == _DATA_CLASS:
        log.error(
            "the database refused a value (SQLSTATE %s) that input checks let through", state, exc_info=exc
        )
        return InvalidArgument(
            [],
            message="a value in the request cannot be stored (invalid characters, or too long)",
            reason="INVALID_DATA",
        )
    # Any other SQLSTATE with a dead connection (the server went away mid-statement) is still
    # an outage; the rest (a constraint nobody handled, a broken query) is a bug: INTERNAL.
    return _unavailable() if isinstance(exc, DBAPIError) and exc.connection_invalidated else None


# Where a session made by session_factory(..., commits=...) keeps its CommitSignal.
_COMMIT_SIGNAL = "tally.outbox_commits"


def session_factory(
    engine: AsyncEngine, *, commits: CommitSignal | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine`. With `commits`, a unit of work on them that wrote outbox events
    tells it once it has committed (the composition root passes one for its writers), so
    in-process watchers wake at once instead of at their next poll."""
    info = {_COMMIT_SIGNAL: commits} if commits is not None else {}
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info)


@functools.cache
def _column_keys(model: Any) -> dict[str, str]:
    """`model`'s column keys by attribute name (they differ where a column's name is a Python
    keyword or a reserved attribute, like `metadata_` for the column `metadata`)."""
    return {prop.key: prop.columns[0].key for prop in sa_inspect(model).column_attrs}


@functools.cache
def _table_insert(model: Any) -> Insert:
    return insert(model.__table__)


@functools.cache
def _table_update(model: Any, key: str) -> Update:
    table = model.__table__
    return update(table).where(table.c[_column_keys(model)[key]] == bindparam(_KEY_PARAMETER))


_KEY_PARAMETER = "tally_row_key"


def table_parameters(model: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` by attribute name as the parameters of a Core statement on `model`'s table."""
    keys = _column_keys(model)
    return {keys[name]: value for name, value in values.items()}


async def insert_row(session: AsyncSession, model: Any, values: Mapping[str, Any]) -> None:
    """INSERT one row of `model` (column values by attribute name) in this transaction.

    A Core statement on the table, built once and given its values as parameters: the ORM's
    `insert(Model).values(...)` builds a bind parameter per value and a cache key over all of
    them on every call, and passes through the ORM's bulk machinery, which cost more than the
    round trip on the billing worker's hot path. Defaults of the columns apply as with the ORM;
    the session has no autoflush (`session_factory`), so neither form flushes pending objects.
    """
    await session.execute(_table_insert(model), table_parameters(model, values))


async def update_row(
    session: AsyncSession, model: Any, key: tuple[str, Any], values: Mapping[str, Any]
) -> int:
    """UPDATE the row of `model` whose `key` (attribute name, value) matches, setting `values` (by
    attribute name), as a Core statement built once per key (as `insert_row`); the rows matched."""
    parameters = table_parameters(model, values)
    parameters[_KEY_PARAMETER] = key[1]
    result = await session.execute(_table_update(model, key[0]), parameters)
    return int(getattr(result, "rowcount", 0))


_DEFERRED_ROWS = "tally.deferred_rows"  # session.info: rows to insert at commit, by model


def defer_row(session: AsyncSession, model: Any, values: Mapping[str, Any]) -> None:
    """Insert a row of `model` (column values by attribute name) when this transaction commits:
    the rows deferred on a session are written together, one `executemany` per model, right
    before COMMIT (`write_deferred_rows`, which `UnitOfWork.commit` calls, and a before-commit
    hook for any other commit). For rows nothing reads back inside the transaction (audit rows:
    a renewal writes three, for one statement instead of three). A rollback drops them."""
    deferred: dict[Any, list[dict[str, Any]]] = session.info.setdefault(_DEFERRED_ROWS, {})
    deferred.setdefault(model, []).append(table_parameters(model, values))


async def write_deferred_rows(session: AsyncSession) -> None:
    """Write the rows `defer_row` holds for this session, now."""
    if session.info.get(_DEFERRED_ROWS):
        await session.run_sync(_write_deferred)


@event.listens_for(Session, "before_commit")
def _write_deferred(session: Session) -> None:
    """Whatever commits a session with deferred rows writes them first (the unit of work writes
    them itself, before its outbox events, through `write_deferred_rows`); sync, inside the async
    session's greenlet. A commit with last writes still pending (`UnitOfWork.last_write`, which
    only `UnitOfWork.commit` runs) is refused: it would commit the transaction without them."""
    if session.info.get(_LAST_WRITES):
        raise RuntimeError("this transaction has last writes pending: commit it through UnitOfWork.commit")
    deferred = session.info.pop(_DEFERRED_ROWS, None)
    for model, rows in (deferred or {}).items():
        session.execute(_table_insert(model), rows)


@event.listens_for(Session, "after_rollback")
def _drop_deferred_on_rollback(session: Session) -> None:
    session.info.pop(_DEFERRED_ROWS, None)
    session.info.pop(_LAST_WRITES, None)


_LAST_WRITES = "tally.last_writes"  # session.info: UnitOfWork.last_write's steps, in order


async def add_all_rows(session: AsyncSession, model: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (column values by attribute name, the same names in every row) into
    `model`'s table in one statement.

    One `executemany`: asyncpg sends every row's Bind/Execute and waits once (one round trip
    once the statement is prepared on the connection); sqlite3 runs it in one driver call.
    `session.add()` + `flush()` per row, as repositories do for single rows, costs one round
    trip each. Nothing is returned: ids are made by the caller (core.ids), not the database.
    A Core statement (see `insert_row`): NULLs are sent as values, so rows that differ only in
    which values are None still make one statement (the ORM's bulk insert splits them).
    """
    if not rows:
        return
    names = rows[0].keys()
    if any(row.keys() != names for row in rows):
        raise ValueError(f"rows for {model.__name__} do not all name the same columns")
    await session.execute(_table_insert(model), [table_parameters(model, row) for row in rows])


def upsert_into(session: AsyncSession, model: Any) -> Any:
    """INSERT for `model` in the session's dialect, with `on_conflict_do_update`/`_nothing`:
    PostgreSQL and SQLite spell the upsert the same way, from different modules."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


async def run_after_commit(callbacks: Sequence[AfterCommit]) -> None:
    """Run each callback in order. A failing one is logged and does not stop the others: the
    transaction has committed, and the caller's success must not turn into an error.
    Cancellation (a passed deadline) is not a failure of the callback and propagates."""
    for callback in callbacks:
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("an after-commit callback failed: %r", callback)


class UnitOfWork:
    """One transaction. Subclasses add their repositories in `_bind`."""

    session: AsyncSession

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock | None = None,
        cache: ReadCache | None = None,
    ):
        self._sessions = sessions
        self._clock = clock or SystemClock()  # stamps outbox events
        self._cache = cache  # the read cache whose entries this transaction's writes retire
        self._after_commit: list[AfterCommit] = []
        self._events: list[PendingEvent] = []

    def _bind(self, session: AsyncSession) -> None:
        """Create the repositories on `session`."""

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        self._after_commit = []
        self._events = []
        self._bind(self.session)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # close() discards an uncommitted transaction. No explicit rollback() first: when the
        # task was cancelled mid-query (a passed deadline), rollback() would find the connection
        # busy and drop it, leaving the server-side statement running (still holding or waiting
        # on locks); close() lets the driver cancel the statement on the server. Shielded, because
        # gRPC may cancel the task a second time when the deadline passes, and an interrupted
        # close() would leave the connection, and its statement, behind.
        await asyncio.shield(self.session.close())
        mapped = classify(exc)
        if mapped is not None:
            raise mapped from exc

    def after_commit(self, callback: AfterCommit) -> None:
        """Run `callback` once this transaction has committed; never if it rolls back.

        For effects that must not happen before the data is durable and may be lost if the
        process dies right after the commit (cache invalidation, waking a worker). Effects
        that must not be lost go through `emit` instead. Callbacks run in registration
        order at the end of `commit()`; one that raises is logged, and the commit stands.
        """
        self._after_commit.append(callback)

    def last_write(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` at the start of `commit()`, after every other write of the transaction and
        before its deferred rows and outbox events (which `step` may still add to).

        For a write that takes a lock other transactions queue on, so that it is held for the
        last statements and the commit only: a finalized invoice's number (the sequence row's
        lock) is taken here. Steps run in registration order; one that raises fails the commit
        (the transaction rolls back). A rollback drops them; a commit of the session other than
        through `commit()` is refused while any is pending.
        """
        self.session.info.setdefault(_LAST_WRITES, []).append(step)

    def invalidate_after_commit(self, *generations: str) -> None:
        """Once committed, retire the read cache's entries that depend on `generations`
        (core/cache.py); nothing when the transaction rolls back or caching is off."""
        cache = self._cache
        if cache is not None and generations:

            async def invalidate() -> None:
                await cache.invalidate(*generations)

            self.after_commit(invalidate)

    def emit(self, event_type: str, resource: tuple[str, str], payload: Mapping[str, Any]) -> None:
        """Record an event in the outbox, in this transaction: it exists if and only if the
        change commits. `resource` is (resource type, resource id); `payload` must be JSON."""
        from core import outbox  # outbox's table is declared on this module's Base

        self._events.append(outbox.pending_event(event_type, resource, payload, self._clock.now()))

    async def commit(self) -> None:
        steps: list[Callable[[], Awaitable[None]]] = self.session.info.get(_LAST_WRITES, [])
        while steps:  # a step may register another; each runs once
            await steps.pop(0)()
        await write_deferred_rows(self.session)
        wrote_events = bool(self._events)
        if wrote_events:
            from core import outbox

            # Written last, right before COMMIT: the outbox's ordering lock is held only
            # for this one statement and the commit itself (see core/outbox.py).
            await outbox.write_events(self.session, self._events)
            self._events = []
        await self.session.commit()
        signal: CommitSignal | None = self.session.info.get(_COMMIT_SIGNAL)
        if wrote_events and signal is not None:
            signal.committed()  # before the callbacks: a slow one must not delay the watchers
        callbacks, self._after_commit = self._after_commit, []
        await run_after_commit(callbacks)

    async def flush(self) -> None:
        await self.session.flush()

"""Database plumbing: engine, declarative base, column types and the unit of work.

The unit of work owns one transaction: `async with uow:` opens it, the use case
calls `await uow.commit()`, and leaving the block without a commit rolls back.
Repositories receive the session and never commit.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from core.errors import Unavailable
from core.settings import Settings

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
    """The same pool, for single-statement reads: no BEGIN/ROLLBACK round trips on PostgreSQL."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(tally_read_only=True)
    return engine.execution_options(isolation_level="AUTOCOMMIT")


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
        read_only = connection.get_execution_options().get("tally_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _is_outage(exc: BaseException | None) -> bool:
    """True for errors that mean the database could not be reached, not that the request was bad."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, SqlTimeoutError | ConnectionError)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class UnitOfWork:
    """One transaction. Subclasses add their repositories in `_bind`."""

    session: AsyncSession

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    def _bind(self, session: AsyncSession) -> None:
        """Create the repositories on `session`."""

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
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
        if _is_outage(exc):
            raise Unavailable(
                "the database is unavailable; retry with backoff", reason="DATABASE_UNAVAILABLE"
            ) from exc

    async def commit(self) -> None:
        await self.session.commit()

    async def flush(self) -> None:
        await self.session.flush()

"""Schema migrations, applied by `tally migrate` (production) or on start (embedded SQLite)."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 7_246_551_001  # pg advisory lock key: one migrator at a time across replicas


class SchemaOutOfDate(Exception):
    pass


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision of this build's migrations (read from their files once a process)."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to `revision` (the newest by default; tests of a migration stop short of
    it); returns (revision before, revision after)."""

    def run(connection: Connection) -> tuple[str | None, str]:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_ID})
        before = _current_revision(connection)
        if revision == "head" and before == head_revision():
            return before, before  # the usual start: nothing to load or run
        command.upgrade(_config(connection), revision)
        return before, head_revision() if revision == "head" else revision

    async with engine.begin() as connection:
        return await connection.run_sync(run)


async def check_current(engine: AsyncEngine) -> None:
    """Raise SchemaOutOfDate unless the database is at the newest revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at revision {current or 'none'}, this build needs {head}; "
            "run `tally migrate`"
        )

"""A throw-away PostgreSQL database for one bench run (asyncpg, synchronous wrappers)."""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get("TALLY_BENCH_POSTGRES_URL") or DEFAULT_ADMIN_URL


@dataclass(frozen=True)
class BenchDatabase:
    admin_url: str
    name: str

    @property
    def url(self) -> str:
        """Plain postgresql:// URL of the bench database (for asyncpg)."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(scheme="postgresql", path=f"/{self.name}"))

    @property
    def sqlalchemy_url(self) -> str:
        return self.url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _fetch_count(url: str, table: str) -> int:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return int(await connection.fetchval(f'SELECT count(*) FROM "{table}"'))  # noqa: S608 (fixed name)
    finally:
        await connection.close()


def create(url: str | None = None, name: str | None = None) -> BenchDatabase:
    database = BenchDatabase(admin_url=url or admin_url(), name=name or f"tally_bench_{secrets.token_hex(4)}")
    asyncio.run(_execute(database.admin_url, f'CREATE DATABASE "{database.name}"'))
    return database


def copy(template: BenchDatabase) -> BenchDatabase:
    """A new database holding what `template` holds (nothing may be connected to `template`)."""
    database = BenchDatabase(admin_url=template.admin_url, name=f"tally_bench_{secrets.token_hex(4)}")
    statement = f'CREATE DATABASE "{database.name}" TEMPLATE "{template.name}"'
    asyncio.run(_execute(database.admin_url, statement))
    return database


def drop(database: BenchDatabase) -> None:
    # WITH (FORCE) ends any session still connected (PostgreSQL 13+).
    asyncio.run(_execute(database.admin_url, f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)'))


async def _exists(url: str, name: str) -> bool:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()


def exists(name: str) -> bool:
    """Whether the server holds a database called `name`."""
    return asyncio.run(_exists(admin_url(), name))


def count_rows(database: BenchDatabase, table: str) -> int:
    return asyncio.run(_fetch_count(database.url, table))

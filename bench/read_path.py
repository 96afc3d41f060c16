"""Microseconds per single-account read, in process: the data path and the read cache.

    PYTHONPATH=.:generated .venv/bin/python bench/read_path.py [--reads N]

Prints one line per variant, each the mean of N sequential reads of one account (after 200
warm-up reads), on a throw-away PostgreSQL database (`TALLY_BENCH_POSTGRES_URL`, see
bench/pgdb.py) and on SQLite in a temporary directory:

- `asyncpg fetchrow`: the driver alone on a pooled connection (the floor);
- `ORM session.get`: the read as it was, an ORM object through the reader unit of work;
- `repository.get`: the read as it is (PostgreSQL: asyncpg on the session's connection;
  SQLite: a Core select compiled once), through the same unit of work;
- `GetAccount use case, cache off / miss / hit`: `account_svc.use_cases.get_account` with
  NoCache, with the Redis cache invalidated before every read (a miss and a fill each time), and
  with the entry warm. Redis: `TALLY_BENCH_REDIS_URL` (default database 14), keys under the
  cache's prefix only; skipped with a message if Redis is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "generated"),
]

import redis.asyncio as redis_asyncio  # noqa: E402

from account_svc import use_cases  # noqa: E402
from account_svc.domain import AccountFields  # noqa: E402
from account_svc.repository import AccountRow  # noqa: E402
from account_svc.sql_unit_of_work import SqlAccountsUnitOfWork  # noqa: E402
from account_svc.use_cases import AccountDeps, account_generation  # noqa: E402
from app import migrate  # noqa: E402
from bench import pgdb  # noqa: E402
from core import db  # noqa: E402
from core.cache import NoCache, ReadCache, RedisReadCache  # noqa: E402
from core.clock import SystemClock  # noqa: E402
from core.pagination import PageTokens  # noqa: E402
from core.principal import SYSTEM  # noqa: E402
from core.settings import Settings  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
WARMUP = 200


async def per_read(reads: int, read: Callable[[], Awaitable[object]]) -> float:
    for _ in range(WARMUP):
        await read()
    start = time.perf_counter()
    for _ in range(reads):
        await read()
    return (time.perf_counter() - start) / reads * 1e6


def line(backend: str, name: str, micros: float) -> None:
    print(f"{backend:<10} {name:<34} {micros:8.1f} us/read", flush=True)


async def run(backend: str, settings: Settings, reads: int, redis_url: str) -> None:
    engine = db.create_engine(settings)
    await migrate.upgrade(engine)
    writers, readers = db.session_factory(engine), db.session_factory(db.read_only(engine))
    clock = SystemClock()

    def deps(cache: ReadCache) -> AccountDeps:
        return AccountDeps(
            new_uow=lambda: SqlAccountsUnitOfWork(writers, clock=clock, cache=cache),
            new_reader=lambda: SqlAccountsUnitOfWork(readers, clock=clock),
            clock=clock,
            page_tokens=PageTokens(b"bench-read-path-secret-0123456789"),
            cache=cache,
        )

    try:
        fields = AccountFields(display_name="Bench", email="bench@example.com", currency_code="EUR")
        account = await use_cases.create_account(deps(NoCache()), SYSTEM, fields)

        if backend == "postgresql":
            async with engine.connect() as connection:
                raw = (await connection.get_raw_connection()).driver_connection

                async def driver() -> object:
                    return await raw.fetchrow("SELECT * FROM accounts WHERE id = $1", account.id)  # type: ignore[union-attr]

                line(backend, "asyncpg fetchrow (floor)", await per_read(reads, driver))

        async def orm() -> object:
            async with SqlAccountsUnitOfWork(readers, clock=clock) as uow:
                return await uow.session.get(AccountRow, account.id)

        async def repository() -> object:
            async with SqlAccountsUnitOfWork(readers, clock=clock) as uow:
                return await uow.accounts.get(account.id)

        line(backend, "ORM session.get (before)", await per_read(reads, orm))
        line(backend, "repository.get (after)", await per_read(reads, repository))
        off = deps(NoCache())
        line(
            backend,
            "GetAccount use case, cache off",
            await per_read(reads, lambda: use_cases.get_account(off, SYSTEM, account.id)),
        )

        client = redis_asyncio.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            await client.ping()
        except Exception as exc:
            print(f"{backend:<10} cache variants skipped: Redis not reachable at {redis_url}: {exc!r}")
            await client.aclose()
            return
        cache = RedisReadCache(client, ttl_seconds=300, timeout_seconds=0.05)
        on = deps(cache)

        async def miss() -> object:
            await cache.invalidate(account_generation(account.id))
            return await use_cases.get_account(on, SYSTEM, account.id)

        async def invalidate_only() -> None:
            await cache.invalidate(account_generation(account.id))

        overhead = await per_read(reads, invalidate_only)
        line(backend, "GetAccount, cache miss + fill", await per_read(reads, miss) - overhead)
        line(
            backend,
            "GetAccount, cache hit",
            await per_read(reads, lambda: use_cases.get_account(on, SYSTEM, account.id)),
        )
        await cache.close()
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    args = parser.parse_args()
    redis_url = os.environ.get("TALLY_BENCH_REDIS_URL") or DEFAULT_REDIS_URL
    print(f"{args.reads} sequential reads per line, one account, after {WARMUP} warm-up reads")
    print("(miss + fill: the invalidation each read needs to make it a miss is measured and subtracted)")
    database = pgdb.create()
    try:
        asyncio.run(run("postgresql", Settings(database_url=database.sqlalchemy_url), args.reads, redis_url))
    finally:
        pgdb.drop(database)
    with tempfile.TemporaryDirectory() as data_dir:
        asyncio.run(run("sqlite", Settings(data_dir=Path(data_dir)), args.reads, redis_url))


if __name__ == "__main__":
    main()

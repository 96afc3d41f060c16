"""What the outbox's ordering lock costs: commits per second with and without events, on PostgreSQL.

    .venv/bin/python bench/outbox.py [--workers 8] [--seconds 5]

Each worker loops for the given time: one unit of work that inserts a row (the change), emits
0, 1 or 10 events, and commits. Transactions that emit take the outbox's ordering lock for
their last statement and the commit (core/outbox.py), so they commit one after another;
those that emit nothing do not. Runs against a throw-away database (bench/pgdb.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import pgdb  # noqa: E402

from app import migrate  # noqa: E402
from core import db, ids  # noqa: E402
from core.idempotency import IdempotencyKeyRow  # noqa: E402
from core.settings import Settings  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def run(url: str, workers: int, seconds: float, events: int) -> float:
    engine = db.create_engine(Settings(database_url=url, db_pool_size=workers))
    sessions = db.session_factory(engine)
    commits = 0

    async def worker() -> None:
        nonlocal commits
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            async with db.UnitOfWork(sessions) as uow:
                key = ids.new_id("bench")
                row = IdempotencyKeyRow(scope="bench", key=key, fingerprint="0" * 64, response=None)
                row.create_time = row.expire_time = T0
                uow.session.add(row)
                for n in range(events):
                    uow.emit("bench.happened", ("bench", key), {"n": n})
                await uow.commit()
                commits += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.monotonic() - started
    await engine.dispose()
    return commits / elapsed


async def prepare(url: str) -> None:
    engine = db.create_engine(Settings(database_url=url))
    await migrate.upgrade(engine)
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    database = pgdb.create()
    try:
        asyncio.run(prepare(database.sqlalchemy_url))
        print(f"{args.workers} workers, {args.seconds:.0f} s each run, PostgreSQL, synchronous_commit on")
        for events in (0, 1, 10):
            rate = asyncio.run(run(database.sqlalchemy_url, args.workers, args.seconds, events))
            print(f"  {events:>2} events per transaction: {rate:8.0f} commits/s")
    finally:
        pgdb.drop(database)


if __name__ == "__main__":
    main()

"""A billing run: N due subscriptions renewed and invoiced by the billing worker on PostgreSQL.

For each size (default 1,000 and 10,000), on a throw-away database: one monthly plan and N accounts
with one subscription each, made through the real server in-process on a clock set at the start of a
month (64 calls in flight); then the clock moves past the renewals and --workers claim loops (as that
many replicas would run them, here in one process and one event loop) work the backlog until nothing
is due. Prints the set-up time, the run's seconds, renewals (= invoices) per second, and checks that
every subscription has exactly two invoices (its sign-up invoice, made by CreateSubscription, and
the renewal's) with gapless numbers. How the run grows from the smallest
size to the largest is the last line: linear growth keeps seconds per 1,000 flat.

    PYTHONPATH=$PWD:$PWD/generated .venv/bin/python bench/billing_run.py [--sizes 1000,10000] [--workers 2]

Loopback only; the counts are bounded by --sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pgdb
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

from app.server import App, build  # noqa: E402
from billing_svc.invoices.tables import InvoiceRow  # noqa: E402
from billing_svc.worker import BillingWorker  # noqa: E402
from core.clock import FrozenClock  # noqa: E402
from core.settings import RateLimit, Settings  # noqa: E402
from tally.subscription.v1 import subscription_pb2, subscription_pb2_grpc  # noqa: E402

START = datetime(2027, 3, 1, 9, tzinfo=UTC)
RENEWAL_RUN = datetime(2027, 4, 1, 1, tzinfo=UTC)
IN_FLIGHT = 64


def _progress(message: str) -> None:
    print(f"==> {message}", flush=True)


async def _populate(app: App, count: int) -> None:
    from tests.billing_support import new_account, new_plan
    from tests.support import channel_as, mint

    async with channel_as(app, mint(app)) as channel:
        subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        plan = await new_plan(channel, "bench-monthly", base_minor=1200)
        gate = asyncio.Semaphore(IN_FLIGHT)
        done = 0

        async def one(n: int) -> None:
            nonlocal done
            async with gate:
                account = await new_account(channel, n)
                await subs.CreateSubscription(
                    subscription_pb2.CreateSubscriptionRequest(
                        subscription=subscription_pb2.Subscription(account_id=account.id, plan_id=plan.id)
                    )
                )
                done += 1
                if done % 2000 == 0:
                    _progress(f"  {done}/{count} subscriptions made")

        await asyncio.gather(*(one(n) for n in range(count)))


def _one_size(count: int, workers: int, batch: int) -> float:
    database = pgdb.create()
    try:
        return asyncio.run(_run(database, count, workers, batch))
    finally:
        pgdb.drop(database)


async def _run(database: pgdb.BenchDatabase, count: int, workers: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as data_dir:
        unlimited = RateLimit(rate=1_000_000, burst=1_000_000)
        settings = Settings(
            database_url=database.sqlalchemy_url,
            migrate_on_start=True,
            data_dir=Path(data_dir),
            secret_key=secrets.token_hex(16),  # type: ignore[arg-type]
            jwt_hs256_secret=secrets.token_hex(32),  # type: ignore[arg-type]
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            billing_worker=False,
            webhook_delivery=False,
            rate_limits={"default": unlimited, "auth": unlimited},
            db_pool_size=max(10, workers * 2),
            log_level="WARNING",
        )
        clock = FrozenClock(START)
        app = await build(settings, clock=clock)
        await app.start()
        try:
            began = time.perf_counter()
            await _populate(app, count)
            _progress(f"{count} accounts and subscriptions made in {time.perf_counter() - began:.1f} s")
            clock.advance(RENEWAL_RUN - START)
            billing = app.components.services["billing"]
            loops = [
                BillingWorker(
                    billing.new_billing_uow, billing.billing_work, clock, batch=batch, name=f"bench-{n}"
                )
                for n in range(workers)
            ]
            due = await loops[0].due_count()
            began = time.perf_counter()
            reports = await asyncio.gather(*(loop.run_until_idle() for loop in loops))
            seconds = time.perf_counter() - began
            renewed = sum(report.work.get("renewal", 0) for report in reports)
            failed = sum(report.failed for report in reports)
            async with app.components.platform.readers() as session:
                renewals = InvoiceRow.create_time == RENEWAL_RUN.replace(hour=0)
                invoices = await session.scalar(select(func.count()).select_from(InvoiceRow).where(renewals))
                signups = await session.scalar(
                    select(func.count()).select_from(InvoiceRow).where(InvoiceRow.create_time == START)
                )
                subscriptions = await session.scalar(
                    select(func.count(func.distinct(InvoiceRow.subscription_id)))
                )
                last = await session.scalar(select(func.max(InvoiceRow.number)))
        finally:
            await app.stop(grace=0)
    ok = due == renewed == invoices == signups == subscriptions == count and failed == 0
    ok = ok and last == f"INV-{2 * count:06d}"
    print(
        f"    {count:>6} subscriptions, {workers} workers: {seconds:6.1f} s, "
        f"{renewed / seconds:7.1f} invoices/s, {seconds / count * 1000:5.2f} s per 1,000; "
        f"every invoice once, numbers gapless: {'yes' if ok else 'NO'}",
        flush=True,
    )
    if not ok:
        raise SystemExit(
            f"check failed: due {due}, renewed {renewed}, invoices {invoices}, sign-ups {signups}, "
            f"last {last}, failed {failed}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated subscription counts")
    parser.add_argument("--workers", type=int, default=2, help="claim loops sharing the backlog")
    parser.add_argument("--batch", type=int, default=100, help="subscriptions per claim")
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    results = {}
    for size in sizes:
        _progress(f"billing run of {size} subscriptions")
        results[size] = _one_size(size, options.workers, options.batch)
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        growth = (results[large] / large) / (results[small] / small)
        print(
            f"    seconds per subscription at {large} / at {small}: {growth:.2f} (1.00 is linear)", flush=True
        )


if __name__ == "__main__":
    main()

"""A billing run: N due subscriptions, with usage, renewed and invoiced by the billing worker on PostgreSQL.

For each size (default 1,000 and 10,000), on a throw-away database: one metered monthly plan (a $20
fee, a SUM meter priced in graduated tiers and a $60 minimum spend: tests/scenarios/usage_plan.py)
and N accounts with one subscription each, made through the real server in-process on a clock set at
the start of a month (64 calls in flight). Then --events usage events (default 100 a subscription)
are recorded mid-month through BatchCreateUsageRecords, 1,000 events a call and --load-in-flight
calls at once, timed on their own (events/s of loading). That set-up is made once; each billing run
(each --processes value, --repeat times) runs on a copy of it (CREATE DATABASE ... TEMPLATE), on a
clock past the renewals, and works the backlog until nothing is due: each renewal invoices the new
period's fee in advance and the closed period's usage in arrears and, the grace period being 0,
finalizes the invoice in the same transaction. With 1 process the run is --workers claim loops in
this process and one event loop; with K it is K worker processes (each `tally worker --once`-like:
its own components on the database and --workers claim loops), started and ready before the timer
starts, so both cores work.

Prints the set-up and loading times, the run's seconds, renewals (= invoices) per second, events
billed per second of the run, SQL statements per renewal (every statement handed to the driver
during the run, claims included, divided by the renewals), and checks that every subscription has
exactly two invoices (its sign-up invoice, made by CreateSubscription, and the renewal's), none
left a draft, with gapless numbers. How the run grows from the smallest size to the largest is the
last line: linear growth keeps seconds per 1,000 flat.

    PYTHONPATH=$PWD:$PWD/generated .venv/bin/python bench/billing_run.py \
        [--sizes 1000,10000] [--events-per-subscription 100] [--workers 4] [--processes 1,2] [--repeat 2] \
        [--keep-setup] [--statement-times]

--keep-setup keeps each size's set-up database and takes it again on the next run (the 10,000 set-up
takes minutes); --statement-times prints, for 1-process runs, the statements that took the most time.

Loopback only; the counts are bounded by --sizes and --events-per-subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pgdb
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

from app.server import App, Components, billing_worker, build, build_components  # noqa: E402
from billing_svc.invoices.tables import InvoiceRow  # noqa: E402
from billing_svc.worker import BillingWorker  # noqa: E402
from core.clock import Clock, FrozenClock  # noqa: E402
from core.settings import RateLimit, Settings  # noqa: E402
from tally.billing.v1 import usage_pb2, usage_pb2_grpc  # noqa: E402
from tally.subscription.v1 import subscription_pb2, subscription_pb2_grpc  # noqa: E402

START = datetime(2027, 3, 1, 9, tzinfo=UTC)
USAGE_TIME = START + timedelta(days=14)  # the events' time: inside the period the renewal closes
RENEWAL_RUN = datetime(2027, 4, 1, 1, tzinfo=UTC)
IN_FLIGHT = 64
EVENTS_PER_CALL = 1000  # BatchCreateUsageRecords' most


def _progress(message: str) -> None:
    print(f"==> {message}", flush=True)


@dataclass
class RunFigures:
    seconds: float
    renewed: int
    failed: int
    statements: int
    python_cpu: float  # CPU seconds of the worker process(es) during the run
    postgres_cpu: float = 0.0  # CPU seconds of the database's PostgreSQL backends during the run


def _settings(database_url: str, data_dir: Path, workers: int) -> Settings:
    unlimited = RateLimit(rate=1_000_000, burst=1_000_000)
    return Settings(
        database_url=database_url,
        migrate_on_start=True,
        data_dir=data_dir,
        secret_key=secrets.token_hex(16),  # type: ignore[arg-type]
        jwt_hs256_secret=secrets.token_hex(32),  # type: ignore[arg-type]
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        billing_worker=False,
        collection_worker=False,
        webhook_delivery=False,
        rate_limits={"default": unlimited, "auth": unlimited},
        db_pool_size=max(10, workers * 2),
        invoice_grace_period_seconds=0,  # the renewal finalizes its invoice: part of the timed run
        log_level="WARNING",
    )


@contextmanager
def _statements(engine: AsyncEngine, timed: dict[str, list[float]] | None = None) -> Iterator[list[int]]:
    """Counts every statement handed to the driver while open (in [0]); with `timed`, also each
    statement's calls and seconds (from handing it to the driver to its answer), by its text."""
    counted = [0]

    def on_execute(conn: Any, *_args: Any) -> None:
        counted[0] += 1
        if timed is not None:
            conn.info.setdefault("bench_began", []).append(time.perf_counter())

    def on_answer(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if timed is not None and conn.info.get("bench_began"):
            entry = timed.setdefault(" ".join(statement.split())[:160], [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - conn.info["bench_began"].pop()

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    event.listen(engine.sync_engine, "after_cursor_execute", on_answer)
    try:
        yield counted
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)
        event.remove(engine.sync_engine, "after_cursor_execute", on_answer)


def _print_statement_times(timed: dict[str, list[float]], renewed: int) -> None:
    """The statements that took the most time in all, with their calls and mean milliseconds."""
    print("           statements by time taken (calls, mean ms, ms a renewal):", flush=True)
    ranked = sorted(timed.items(), key=lambda item: -item[1][1])[:15]
    for text, (calls, seconds) in ranked:
        each, per_renewal = seconds / calls * 1000, seconds / max(renewed, 1) * 1000
        print(f"           {int(calls):>7} {each:7.2f} {per_renewal:6.2f}  {text}", flush=True)


async def _populate(app: App, count: int) -> list[str]:
    from tests.billing_support import new_account
    from tests.scenarios.usage_plan import usage_plan
    from tests.support import channel_as, mint

    async with channel_as(app, mint(app)) as channel:
        subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        _meter, plan = await usage_plan(channel)
        gate = asyncio.Semaphore(IN_FLIGHT)
        accounts: list[str] = []

        async def one(n: int) -> None:
            async with gate:
                account = await new_account(channel, n)
                await subs.CreateSubscription(
                    subscription_pb2.CreateSubscriptionRequest(
                        subscription=subscription_pb2.Subscription(account_id=account.id, plan_id=plan.id)
                    )
                )
                accounts.append(account.id)
                if len(accounts) % 2000 == 0:
                    _progress(f"  {len(accounts)}/{count} subscriptions made")

        await asyncio.gather(*(one(n) for n in range(count)))
    return accounts


async def _load_usage(app: App, accounts: list[str], per_account: int, in_flight: int) -> int:
    """`per_account` events for each account, in calls of EVENTS_PER_CALL, `in_flight` at once;
    the events stored."""
    from tests.support import channel_as, mint

    total = len(accounts) * per_account

    def request(first: int) -> usage_pb2.BatchCreateUsageRecordsRequest:
        batch = usage_pb2.BatchCreateUsageRecordsRequest()
        for n in range(first, min(first + EVENTS_PER_CALL, total)):
            one = batch.requests.add(account_id=accounts[n // per_account])
            one.usage_record.service = "api-calls"
            one.usage_record.units_consumed.value = str(1 + n % 7)
        return batch

    stored = 0
    starts = iter(range(0, total, EVENTS_PER_CALL))
    async with channel_as(app, mint(app)) as channel:
        usage = usage_pb2_grpc.UsageServiceStub(channel)

        async def sender() -> None:
            nonlocal stored
            for first in starts:
                reply = await usage.BatchCreateUsageRecords(request(first))
                if reply.failed_count:
                    raise SystemExit(f"{reply.failed_count} usage events refused")
                stored += reply.stored_count

        await asyncio.gather(*(sender() for _ in range(in_flight)))
    return stored


def _loops(app_or_components: Any, clock: Clock, workers: int, batch: int) -> list[BillingWorker]:
    billing = app_or_components.services["billing"]
    return [
        BillingWorker(
            billing.new_billing_uow,
            billing.billing_work,
            clock,
            batch=batch,
            name=f"bench-{n}",
            finalize=billing.billing_work.finalize_due_draft,
        )
        for n in range(workers)
    ]


async def _timed_run(
    components: Components, clock: Clock, workers: int, batch: int, statement_times: bool = False
) -> RunFigures:
    """`workers` claim loops on `components` until nothing is due: seconds, renewals, failures,
    statements and this process's CPU seconds."""
    loops = _loops(components, clock, workers, batch)
    timed: dict[str, list[float]] | None = {} if statement_times else None
    with _statements(components.platform.engine, timed) as counted:
        began, cpu = time.perf_counter(), time.process_time()
        reports = await asyncio.gather(*(loop.run_until_idle() for loop in loops))
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    renewed = sum(report.work.get("renewal", 0) for report in reports)
    if timed is not None:
        _print_statement_times(timed, renewed)
    return RunFigures(
        seconds=seconds,
        renewed=renewed,
        failed=sum(report.failed for report in reports),
        statements=counted[0],
        python_cpu=cpu,
    )


async def _backend_pids(url: str) -> list[int]:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return [int(row["pid"]) for row in rows]


def _backend_cpu(database: pgdb.BenchDatabase) -> dict[int, float]:
    """CPU seconds so far of each backend connected to `database` (PostgreSQL on this machine)."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for pid in asyncio.run(_backend_pids(database.url)):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile, or PostgreSQL is not local
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return cpu


def _cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _run_in_processes(database: pgdb.BenchDatabase, processes: int, workers: int, batch: int) -> RunFigures:
    """`processes` children (this script's --child), each ready before the timer starts; each keeps
    its connections until told to end, so that their backends' CPU can be read."""
    command = [sys.executable, __file__, "--child", "--workers", str(workers), "--batch", str(batch)]
    environment = {**os.environ, "BENCH_DATABASE_URL": database.sqlalchemy_url}
    children = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit("a worker process did not start")
        backends = _backend_cpu(database)
        began = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        answers = [json.loads(child.stdout.readline()) for child in children if child.stdout is not None]
        seconds = time.perf_counter() - began
        postgres_cpu = _cpu_since(backends, _backend_cpu(database))
    finally:
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=60)
    return RunFigures(
        seconds=seconds,
        renewed=sum(answer["renewed"] for answer in answers),
        failed=sum(answer["failed"] for answer in answers),
        statements=sum(answer["statements"] for answer in answers),
        python_cpu=sum(answer["python_cpu"] for answer in answers),
        postgres_cpu=postgres_cpu,
    )


async def _child(workers: int, batch: int) -> None:
    """One worker process: its own components on the bench's database, ready, then run on "go"."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = _settings(os.environ["BENCH_DATABASE_URL"], Path(data_dir), workers)
        settings = settings.model_copy(update={"migrate_on_start": False})
        clock = FrozenClock(RENEWAL_RUN)
        components = await build_components(settings, clock=clock)
        try:
            if billing_worker(components) is None:
                raise SystemExit("no billing module")
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            figures = await _timed_run(components, clock, workers, batch)
            print(json.dumps(figures.__dict__), flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # the end: stdin closed
        finally:
            await components.close()


def _one_size(count: int, options: argparse.Namespace) -> list[float]:
    """The set-up once, then each billing run (each --processes value, --repeat times) on a copy.
    With --keep-setup, the set-up database is kept (named by the size and the events a subscription)
    and a later run of the same size takes it again instead of making it."""
    kept = f"tally_bench_setup_{count}_{options.events_per_subscription}"
    if options.keep_setup and pgdb.exists(kept):
        database = pgdb.BenchDatabase(admin_url=pgdb.admin_url(), name=kept)
        stored = pgdb.count_rows(database, "usage_records")
        _progress(f"the set-up kept in {kept} taken again ({stored} usage events)")
        return _runs(database, count, stored, options)
    database = pgdb.create(name=kept if options.keep_setup else None)
    try:
        stored = asyncio.run(_prepare(database, count, options))
        return _runs(database, count, stored, options)
    finally:
        if not options.keep_setup:
            pgdb.drop(database)


def _runs(database: pgdb.BenchDatabase, count: int, stored: int, options: argparse.Namespace) -> list[float]:
    """Each billing run (each --processes value, --repeat times) on a copy of the set-up."""
    seconds = []
    for processes in options.processes:
        for _ in range(options.repeat):
            copy = pgdb.copy(database)
            try:
                seconds.append(asyncio.run(_billing_run(copy, count, stored, processes, options)))
            finally:
                pgdb.drop(copy)
    return seconds


async def _prepare(database: pgdb.BenchDatabase, count: int, options: argparse.Namespace) -> int:
    """The plan, the accounts and subscriptions, and their usage; the events stored."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = _settings(database.sqlalchemy_url, Path(data_dir), options.workers)
        clock = FrozenClock(START)
        app = await build(settings, clock=clock)
        await app.start()
        try:
            began = time.perf_counter()
            accounts = await _populate(app, count)
            _progress(f"{count} accounts and subscriptions made in {time.perf_counter() - began:.1f} s")
            clock.advance(USAGE_TIME - START)
            began = time.perf_counter()
            stored = await _load_usage(app, accounts, options.events_per_subscription, options.load_in_flight)
            loading = time.perf_counter() - began
        finally:
            await app.stop(grace=0)
    print(
        f"    {stored} usage events loaded in {loading:.1f} s: {stored / loading:,.0f} events/s "
        f"(BatchCreateUsageRecords of {EVENTS_PER_CALL}, {options.load_in_flight} in flight)",
        flush=True,
    )
    return stored


async def _billing_run(
    database: pgdb.BenchDatabase, count: int, stored: int, processes: int, options: argparse.Namespace
) -> float:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = _settings(database.sqlalchemy_url, Path(data_dir), options.workers)
        clock = FrozenClock(RENEWAL_RUN)
        components = await build_components(settings, clock=clock)
        try:
            due = await _loops(components, clock, 1, options.batch)[0].due_count()
            if processes > 1:  # this process's engine stays open, idle
                figures = await asyncio.to_thread(
                    _run_in_processes, database, processes, options.workers, options.batch
                )
            else:
                backends = await asyncio.to_thread(_backend_cpu, database)
                figures = await _timed_run(
                    components, clock, options.workers, options.batch, options.statement_times
                )
                after = await asyncio.to_thread(_backend_cpu, database)
                figures.postgres_cpu = _cpu_since(backends, after)
            async with components.platform.readers() as session:
                renewals = InvoiceRow.create_time == RENEWAL_RUN.replace(hour=0)
                invoices = await session.scalar(select(func.count()).select_from(InvoiceRow).where(renewals))
                signups = await session.scalar(
                    select(func.count()).select_from(InvoiceRow).where(InvoiceRow.create_time == START)
                )
                drafts = await session.scalar(
                    select(func.count()).select_from(InvoiceRow).where(InvoiceRow.status == "draft")
                )
                subscriptions = await session.scalar(
                    select(func.count(func.distinct(InvoiceRow.subscription_id)))
                )
                last = await session.scalar(select(func.max(InvoiceRow.number)))
        finally:
            await components.close()
    seconds, renewed = figures.seconds, figures.renewed
    ok = due == renewed == invoices == signups == subscriptions == count and figures.failed == 0
    ok = ok and drafts == 0 and stored == count * options.events_per_subscription
    ok = ok and last == f"INV-{2 * count:06d}"
    where = (
        f"{processes} processes x {options.workers} loops" if processes > 1 else f"{options.workers} loops"
    )
    print(
        f"    {count:>6} subscriptions, {stored} events, {where}: {seconds:6.1f} s, "
        f"{renewed / seconds:7.1f} invoices/s, {stored / seconds:9,.0f} events/s billed, "
        f"{figures.statements / max(renewed, 1):5.1f} statements per renewal, "
        f"{seconds / count * 1000:5.2f} s per 1,000; "
        f"every invoice once, finalized, numbers gapless: {'yes' if ok else 'NO'}\n"
        f"           CPU during the run: worker process(es) {figures.python_cpu:.1f} s, "
        f"PostgreSQL backends {figures.postgres_cpu:.1f} s "
        f"({(figures.python_cpu + figures.postgres_cpu) / renewed * 1000:.1f} ms a renewal; "
        f"the machine has {os.cpu_count()} cores x {seconds:.1f} s)",
        flush=True,
    )
    if not ok:
        raise SystemExit(
            f"check failed: due {due}, renewed {renewed}, invoices {invoices}, sign-ups {signups}, "
            f"drafts {drafts}, events {stored}, last {last}, failed {figures.failed}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated subscription counts")
    parser.add_argument(
        "--events-per-subscription", type=int, default=100, help="usage events recorded per subscription"
    )
    parser.add_argument("--load-in-flight", type=int, default=4, help="usage batch calls in flight")
    parser.add_argument("--workers", type=int, default=4, help="claim loops sharing the backlog, per process")
    parser.add_argument(
        "--processes", default="1,2", help="comma-separated worker process counts, a billing run each"
    )
    parser.add_argument("--repeat", type=int, default=1, help="billing runs of each --processes value")
    parser.add_argument("--batch", type=int, default=100, help="subscriptions per claim")
    parser.add_argument(
        "--keep-setup",
        action="store_true",
        help="keep each size's set-up database (tally_bench_setup_<size>_<events>) and take it again "
        "on the next run; drop it with DROP DATABASE when done",
    )
    parser.add_argument(
        "--statement-times",
        action="store_true",
        help="print the statements that took the most time (1-process runs)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    options.processes = [int(count) for count in options.processes.split(",")]
    if options.child:
        asyncio.run(_child(options.workers, options.batch))
        return
    sizes = [int(size) for size in options.sizes.split(",")]
    results = {}
    for size in sizes:
        _progress(f"billing run of {size} subscriptions")
        results[size] = _one_size(size, options)
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        for index, processes in enumerate(options.processes):
            runs = slice(index * options.repeat, (index + 1) * options.repeat)
            best = {size: min(results[size][runs]) for size in (small, large)}
            growth = (best[large] / large) / (best[small] / small)
            print(
                f"    {processes} process(es), best runs: seconds per subscription at {large} / at {small}: "
                f"{growth:.2f} (1.00 is linear)",
                flush=True,
            )


if __name__ == "__main__":
    main()

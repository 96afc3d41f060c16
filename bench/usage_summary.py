"""Milliseconds per GetUsageSummary with many events in the period, through the real server.

    PYTHONPATH=.:generated .venv/bin/python bench/usage_summary.py [--events 100000] [--calls 20]

On a throw-away PostgreSQL database (`TALLY_BENCH_POSTGRES_URL`, see bench/pgdb.py): one account
on a monthly plan with a graduated charge on a SUM meter, `--events` records spread over its
current period across four meters (SUM, COUNT, UNIQUE_COUNT, WEIGHTED_SUM; a tenth of the SUM
meter's records with their own price), written with SQLAlchemy Core as the ingestion writes them,
then the account's hourly rollup (usage_hourly) built from them, as the ingestion keeps it.
Prints the mean and the slowest of `--calls` sequential GetUsageSummary calls over gRPC (after 3
warm-up calls), on the schema as migrated, then again with a covering index on (account_id,
event_time) INCLUDE (meter_id, units, price_per_unit), a candidate for the migration.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC
from decimal import Decimal
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "generated"),
]

import grpc  # noqa: E402
from google.type import decimal_pb2  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from app.server import App, build  # noqa: E402
from bench import pgdb  # noqa: E402
from billing_svc.usage.repository import rebuild_rollup  # noqa: E402
from billing_svc.usage.tables import UsageRecordRow  # noqa: E402
from core import ids  # noqa: E402
from core.principal import Principal, Role, scopes_for  # noqa: E402
from core.settings import Settings  # noqa: E402
from tally.account.v1 import account_pb2, account_pb2_grpc  # noqa: E402
from tally.billing.v1 import meter_pb2, meter_pb2_grpc, usage_pb2, usage_pb2_grpc  # noqa: E402
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc, subscription_pb2, subscription_pb2_grpc  # noqa: E402

M = meter_pb2.Meter
_BATCH = 5000


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return await continuation(details._replace(metadata=metadata), request)


async def _seed(app: App, channel: grpc.aio.Channel, events: int) -> str:
    account = await account_pb2_grpc.AccountServiceStub(channel).CreateAccount(
        account_pb2.CreateAccountRequest(
            account=account_pb2.Account(display_name="Bench", email="bench@example.test", currency_code="USD")
        )
    )
    meters = meter_pb2_grpc.MeterServiceStub(channel)
    kinds = [
        ("api", M.AGGREGATION_SUM, ""),
        ("calls", M.AGGREGATION_COUNT, ""),
        ("users", M.AGGREGATION_UNIQUE_COUNT, "user"),
        ("storage", M.AGGREGATION_WEIGHTED_SUM, ""),
    ]
    made = []
    for code, kind, prop in kinds:
        meter = M(code=code, display_name=code.title(), aggregation=kind)
        meter.property = prop
        made.append(await meters.CreateMeter(meter_pb2.CreateMeterRequest(meter=meter)))
    tiers = [
        plan_pb2.Tier(up_to=decimal_pb2.Decimal(value="1000"), unit_price=decimal_pb2.Decimal(value="0")),
        plan_pb2.Tier(unit_price=decimal_pb2.Decimal(value="0.0015")),
    ]
    plan = await plan_pb2_grpc.PlanServiceStub(channel).CreatePlan(
        plan_pb2.CreatePlanRequest(
            plan=plan_pb2.Plan(
                code="bench",
                display_name="Bench",
                currency_code="USD",
                billing_interval=plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_MONTH, count=1),
                metered_charges=[
                    plan_pb2.MeteredCharge(
                        meter_id=made[0].id, price=plan_pb2.Price(graduated=plan_pb2.TieredPrice(tiers=tiers))
                    )
                ],
            )
        )
    )
    sub = await subscription_pb2_grpc.SubscriptionServiceStub(channel).CreateSubscription(
        subscription_pb2.CreateSubscriptionRequest(
            subscription=subscription_pb2.Subscription(account_id=account.id, plan_id=plan.id)
        )
    )
    start_utc = sub.current_period_start.ToDatetime(tzinfo=UTC)
    period = sub.current_period_end.ToDatetime(tzinfo=UTC) - start_utc
    step = period / (events + 1)
    rows = []
    for n in range(events):
        meter = made[n % len(made)]
        rows.append(
            {
                "account_id": account.id,
                "event_time": start_utc + step * (n + 1),
                "id": ids.new_ordered_id("usg", start_utc),
                "meter_id": meter.id,
                "service": meter.code,
                "units": Decimal(n % 7) + Decimal("0.25"),
                "price_per_unit": Decimal("0.002") if meter.code == "api" and n % 10 == 0 else None,
                "properties": {"user": f"u{n % 500}"},
                "event_id": f"bench-{n}",
                "create_time": start_utc,
            }
        )
    async with app.engine.begin() as connection:
        for offset in range(0, len(rows), _BATCH):
            await connection.execute(insert(UsageRecordRow), rows[offset : offset + _BATCH])
        await rebuild_rollup(connection, str(account.id))  # the hourly rollup the ingestion keeps
    return str(account.id)


async def _vacuum(app: App, covering: bool) -> None:
    """VACUUM ANALYZE (as autovacuum would, in time); with `covering`, first an index that holds
    every column the totals read, so PostgreSQL may answer them from the index alone."""
    async with app.engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        if covering:
            await connection.exec_driver_sql(
                "CREATE INDEX ix_bench_usage_covering ON usage_records (account_id, event_time)"
                " INCLUDE (meter_id, units, price_per_unit)"
            )
        await connection.exec_driver_sql("VACUUM ANALYZE usage_records")
        await connection.exec_driver_sql("VACUUM ANALYZE usage_hourly")


async def _measure(stub: usage_pb2_grpc.UsageServiceStub, account_id: str, calls: int) -> tuple[float, float]:
    request = usage_pb2.GetUsageSummaryRequest(account_id=account_id)
    for _ in range(3):
        await stub.GetUsageSummary(request)
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        await stub.GetUsageSummary(request)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.mean(times), max(times)


async def run(database_url: str, events: int, calls: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            database_url=database_url,
            migrate_on_start=True,
            data_dir=Path(data_dir),
            secret_key=secrets.token_hex(16),
            jwt_hs256_secret=secrets.token_hex(16),
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
        )
        app = await build(settings)
        await app.start()
        try:
            admin = Principal(subject="bench", role=Role.ADMIN, scopes=scopes_for(Role.ADMIN))
            token = app.components.issuer.issue(admin, 3600).token
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", interceptors=[_Bearer(token)])
            async with channel:
                began = time.perf_counter()
                account_id = await _seed(app, channel, events)
                print(f"seeded {events} events in {time.perf_counter() - began:.1f} s")
                stub = usage_pb2_grpc.UsageServiceStub(channel)
                for covering in (False, True):
                    await _vacuum(app, covering)
                    mean, worst = await _measure(stub, account_id, calls)
                    index = "with a covering index" if covering else "schema as migrated"
                    print(
                        f"GetUsageSummary, {events} events, 4 meters, {index}:"
                        f" {mean:.1f} ms mean, {worst:.1f} ms max"
                    )
        finally:
            await app.stop(grace=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    database = pgdb.create()
    try:
        asyncio.run(run(database.sqlalchemy_url, args.events, args.calls))
    finally:
        pgdb.drop(database)


if __name__ == "__main__":
    main()

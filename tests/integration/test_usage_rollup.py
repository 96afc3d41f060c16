"""The hourly rollup of usage (usage_hourly, PostgreSQL) against the raw rows it summarises.

Random batches (events on and between hour boundaries, negative units, recorded prices, replays,
reused ids and refused events mixed in) go through record_usage_batch; then the reader's COUNT,
SUM, MAX and WEIGHTED_SUM over ranges with and without hour-aligned edges must equal
billing_svc.usage.aggregation over the stored rows, and the rollup must equal a GROUP BY of them.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from app.server import App
from billing_svc.catalog.domain import Aggregation
from billing_svc.module import BillingServices
from billing_svc.usage import aggregation, partitions
from billing_svc.usage.domain import Outcome, UsageInput
from billing_svc.usage.read_repository import SqlUsageReader
from billing_svc.usage.tables import UsageHourlyRow, UsageRecordRow
from billing_svc.usage.use_cases import record_usage_batch
from core import db
from core.money import DECIMAL_CONTEXT
from core.principal import SYSTEM
from tally.billing.v1 import meter_pb2
from tests.billing_support import new_account
from tests.integration.test_usage_ingest import meter
from tests.support import channel_as, mint

pytestmark = pytest.mark.postgres

HOUR = timedelta(hours=1)


def _billing(app: App) -> BillingServices:
    billing = app.components.services["billing"]
    assert isinstance(billing, BillingServices)
    return billing


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def _stored(app: App, account_id: str) -> list[UsageRecordRow]:
    async with db.session_factory(db.read_only(app.engine))() as session:
        statement = select(UsageRecordRow).where(UsageRecordRow.account_id == account_id)
        return list((await session.scalars(statement)).all())


async def _rollup(
    app: App, account_id: str
) -> dict[tuple[str, datetime], tuple[int, Decimal, Decimal, Decimal]]:
    async with db.session_factory(db.read_only(app.engine))() as session:
        statement = select(UsageHourlyRow).where(UsageHourlyRow.account_id == account_id)
        return {
            (row.meter_id, row.hour): (row.record_count, row.units_sum, row.units_max, row.units_time_sum)
            for row in (await session.scalars(statement)).all()
        }


def _expected_rollup(
    records: list[UsageRecordRow],
) -> dict[tuple[str, datetime], tuple[int, Decimal, Decimal, Decimal]]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    groups: dict[tuple[str, datetime], list[UsageRecordRow]] = {}
    for row in records:
        if row.price_per_unit is None:
            groups.setdefault((row.meter_id, _hour(row.event_time)), []).append(row)
    return {
        key: (
            len(rows),
            aggregation.total(row.units for row in rows),
            max(row.units for row in rows),
            aggregation.total(
                DECIMAL_CONTEXT.multiply(row.units, (row.event_time - epoch) // timedelta(microseconds=1))
                for row in rows
            ),
        )
        for key, rows in groups.items()
    }


def _units(rng: random.Random) -> str:
    whole = rng.choice([0, 1, 7, 250, 10**9])
    fraction = rng.randrange(10**12)
    sign = "-" if rng.random() < 0.25 else ""
    return f"{sign}{whole}.{fraction:012d}"


async def test_the_rollup_agrees_with_the_raw_rows_for_random_batches(pg_app: App) -> None:
    rng = random.Random(20261202)
    async with channel_as(pg_app, mint(pg_app)) as channel:
        sums = await meter(channel, "storage_sum")
        gauge = await meter(channel, "storage_gauge", meter_pb2.Meter.AGGREGATION_WEIGHTED_SUM)
        account = (await new_account(channel, 1)).id
    deps = _billing(pg_app).usage
    base = _hour(datetime.now(UTC)) - 5 * HOUR  # five whole hours back, all in the late window
    boundaries = [base + k * HOUR for k in range(6)]
    sent: list[UsageInput] = []
    for batch_number in range(12):
        batch: list[UsageInput] = []
        for _ in range(rng.randrange(1, 40)):
            at = rng.choice(boundaries) if rng.random() < 0.2 else base + rng.random() * 5 * HOUR
            batch.append(
                UsageInput(
                    account_id=account,
                    service=rng.choice(["storage_sum", "storage_gauge"]),
                    units=_units(rng),
                    price_per_unit="0.25" if rng.random() < 0.15 else "",
                    event_time=at,
                    event_id=f"e-{batch_number}-{len(batch)}",
                )
            )
        if sent:
            replay = rng.choice(sent)
            batch.append(replay)  # a replay: not added to the rollup again
            batch.append(
                UsageInput(  # the same id with other units: refused
                    account_id=account, service=replay.service, units="424242", event_time=replay.event_time,
                    event_id=replay.event_id,
                )
            )  # fmt: skip
        batch.append(UsageInput(account_id=account, service="storage_sum", units="many", event_id="bad"))
        batch.append(batch[0])  # a duplicate inside the batch
        results = await record_usage_batch(deps, SYSTEM, batch)
        assert Outcome.FAILED in {result.outcome for result in results}
        sent.extend(
            item for item, result in zip(batch, results, strict=True) if result.outcome is Outcome.STORED
        )

    records = await _stored(pg_app, account)
    assert len(records) == len(sent)
    assert await _rollup(pg_app, account) == _expected_rollup(records)

    ranges = [
        (base, base + 5 * HOUR),  # aligned both ends
        (base - 2 * HOUR, base + 6 * HOUR),  # wider than the data
        (base + timedelta(minutes=17), base + 4 * HOUR + timedelta(seconds=1)),  # neither aligned
        (base + HOUR, base + 3 * HOUR + timedelta(microseconds=1)),  # start aligned only
        (base + timedelta(microseconds=1), base + 2 * HOUR),  # end aligned only
        (base + 2 * HOUR + timedelta(minutes=5), base + 2 * HOUR + timedelta(minutes=50)),  # inside one
        (base + 2 * HOUR, base + 3 * HOUR),  # exactly one hour
        (base + timedelta(minutes=59), base + HOUR + timedelta(minutes=1)),  # across one boundary
    ]
    by_meter = {
        meter_id: [row for row in records if row.meter_id == meter_id and row.price_per_unit is None]
        for meter_id in (sums.id, gauge.id)
    }
    recorded = {
        meter_id: [row for row in records if row.meter_id == meter_id and row.price_per_unit is not None]
        for meter_id in (sums.id, gauge.id)
    }
    async with db.session_factory(db.read_only(pg_app.engine))() as session:
        reader = SqlUsageReader(session)
        for start, end in ranges:
            totals = await reader.period_totals(account, start, end)
            for meter_id, planned in by_meter.items():

                def raw(
                    kind: Aggregation,
                    rows: list[UsageRecordRow] = planned,
                    start: datetime = start,
                    end: datetime = end,
                ) -> Decimal:
                    return aggregation.aggregate(kind, rows, start=start, end=end)

                inside_recorded = [row for row in recorded[meter_id] if start <= row.event_time < end]
                got = totals.get(meter_id)
                if got is None:
                    assert raw(Aggregation.COUNT) == 0 and not inside_recorded
                else:
                    assert Decimal(got.plan_count) == raw(Aggregation.COUNT), (start, end)
                    assert got.plan_sum == raw(Aggregation.SUM), (start, end)
                    assert got.plan_max == raw(Aggregation.MAX), (start, end)
                    assert got.record_count == got.plan_count + len(inside_recorded)
                    assert got.recorded_units == aggregation.total(row.units for row in inside_recorded)
                level = await reader.level_before(account, meter_id, start)
                area = await reader.weighted_area(account, meter_id, start, end)
                assert aggregation.weighted_quantity(level, area, start, end) == raw(
                    Aggregation.WEIGHTED_SUM
                ), (start, end)


async def test_concurrent_batches_on_the_same_hour_leave_exact_counts(pg_app: App) -> None:
    async with channel_as(pg_app, mint(pg_app)) as channel:
        api = await meter(channel, "api_calls")
        account = (await new_account(channel, 1)).id
    deps = _billing(pg_app).usage
    at = _hour(datetime.now(UTC)) + timedelta(microseconds=1)
    # Eight batches of 60 events in one hour; each shares half its event ids with the next.
    batches = [
        [
            UsageInput(account_id=account, service="api_calls", units="1.5", event_time=at, event_id=f"c-{n}")
            for n in range(30 * k, 30 * k + 60)
        ]
        for k in range(8)
    ]
    results = await asyncio.gather(*(record_usage_batch(deps, SYSTEM, batch) for batch in batches))
    stored = sum(result.outcome is Outcome.STORED for batch in results for result in batch)
    assert stored == 30 * 8 + 30  # every distinct id once
    rollup = await _rollup(pg_app, account)
    assert rollup == _expected_rollup(await _stored(pg_app, account))
    assert rollup[(api.id, _hour(at))][:3] == (stored, Decimal("1.5") * stored, Decimal("1.5"))


async def test_detaching_a_month_deletes_its_rollup_hours(pg_app: App) -> None:
    now = datetime.now(UTC)
    old, kept = partitions.month_start(now, -3), partitions.month_start(now, -1)
    async with pg_app.engine.connect() as connection:
        for hour in (old, old + 5 * HOUR, kept):
            await connection.execute(
                text("INSERT INTO usage_hourly VALUES ('acct_x', 'mtr_x', :hour, 1, 1, 1, 1)"),
                {"hour": hour},
            )
        detached = await partitions.detach_partitions_before(connection, partitions.month_start(now, -1))
        assert partitions.partition_name(old) in detached
        left = (await connection.execute(text("SELECT hour FROM usage_hourly"))).scalars().all()
        assert left == [kept]  # the detached month's hours went with its records; later ones stay
        await connection.rollback()

"""UsageService's reads through the real server on each backend: ListUsageRecords and
GetUsageSummary (each aggregation, plan and recorded prices, the current period on a test clock),
their errors, and who may read what.

Records are written with SQLAlchemy Core into the table the ingestion writes (usage_records), so
these tests do not depend on CreateUsageRecord.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.type import decimal_pb2
from sqlalchemy import insert

from app.server import App
from billing_svc.usage import aggregation
from billing_svc.usage.repository import rebuild_rollup
from billing_svc.usage.tables import UsageRecordRow
from core import ids
from core.principal import Role
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import meter_pb2, meter_pb2_grpc, test_clock_pb2, test_clock_pb2_grpc
from tally.billing.v1 import usage_pb2 as pb
from tally.billing.v1.usage_pb2_grpc import UsageServiceStub
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc, subscription_pb2, subscription_pb2_grpc
from tests.billing_support import new_account
from tests.support import channel_as, details, failing, mint, reason

START = datetime(2027, 1, 1, tzinfo=UTC)
END = datetime(2027, 2, 1, tzinfo=UTC)  # 31 days
WALL = datetime(2026, 12, 1, tzinfo=UTC)
M = meter_pb2.Meter


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def day(n: float) -> datetime:
    return START + timedelta(days=n)


@pytest.fixture
def usage(channel: grpc.aio.Channel) -> UsageServiceStub:
    return UsageServiceStub(channel)


async def new_meter(channel: grpc.aio.Channel, code: str, kind: M.Aggregation.ValueType, prop: str = "") -> M:
    stub = meter_pb2_grpc.MeterServiceStub(channel)
    meter = M(code=code, display_name=code.replace("-", " ").title(), unit_label="unit", aggregation=kind)
    meter.property = prop
    return await stub.CreateMeter(meter_pb2.CreateMeterRequest(meter=meter))


_counter = iter(range(10**9))


async def record(
    app: App,
    account_id: str,
    meter: M,
    events: list[tuple[datetime, str]],
    *,
    price: str | None = None,
    **properties: str,
) -> list[str]:
    """Store events as the ingestion would: (event_time, units) each, same price and properties."""
    rows: list[dict[str, Any]] = []
    for event_time, units in events:
        rows.append(
            {
                "account_id": account_id,
                "event_time": event_time,
                "id": ids.new_ordered_id("usg", WALL),
                "meter_id": meter.id,
                "service": meter.code,
                "units": Decimal(units),
                "price_per_unit": Decimal(price) if price is not None else None,
                "properties": dict(properties),
                "event_id": f"ev-{next(_counter)}",
                "create_time": WALL,
            }
        )
    async with app.engine.begin() as connection:
        await connection.execute(insert(UsageRecordRow), rows)
        await rebuild_rollup(connection, account_id)  # the ingestion keeps it in step
    return [row["id"] for row in rows]


def by_service(summary: pb.UsageSummary) -> dict[str, pb.MeterUsage]:
    return {meter.service: meter for meter in summary.meters}


async def summary_of(
    usage: UsageServiceStub, account_id: str, start: datetime, end: datetime
) -> pb.UsageSummary:
    return await usage.GetUsageSummary(
        pb.GetUsageSummaryRequest(account_id=account_id, start_time=ts(start), end_time=ts(end))
    )


# Events at start (in), at end (out), before start (only a WEIGHTED_SUM's level), and a correction.
EVENTS = {
    "calls": (M.AGGREGATION_COUNT, "", [(START, "1"), (day(2), "1"), (day(30.5), "1"), (END, "1")]),
    "bytes": (M.AGGREGATION_SUM, "", [(START, "10.5"), (day(3), "4"), (day(4), "-2.25"), (END, "100")]),
    "peak": (M.AGGREGATION_MAX, "", [(day(-1), "99"), (START, "3"), (day(9), "7.5"), (END, "50")]),
    "storage": (M.AGGREGATION_WEIGHTED_SUM, "", [(day(-10), "4"), (day(15.5), "-1"), (day(20), "0.5")]),
    "seats": (M.AGGREGATION_LATEST, "", [(day(1), "5"), (day(7), "9"), (day(7), "8"), (END, "70")]),
}
USERS = [(START, "a"), (day(1), "b"), (day(2), "a"), (END, "c")]  # UNIQUE_COUNT on `user`
EXPECTED = {
    "calls": "3",
    "bytes": "12.25",
    "peak": "7.5",
    "storage": "3.677419354839",  # 4 for 15.5 days, 3 for 4.5, 3.5 for 11: 114 / 31, half-up
    "seats": "8",  # day 7 twice: the later record (stored second) wins
    "users": "2",
}


async def test_each_aggregation_gives_the_same_quantity_on_each_backend(
    app: App, channel: grpc.aio.Channel, usage: UsageServiceStub
) -> None:
    account = await new_account(channel, 1)
    for code, (kind, _, events) in EVENTS.items():
        meter = await new_meter(channel, code, kind)
        for event in events:  # one at a time: ids ordered as the events are listed
            await record(app, account.id, meter, [event])
    users = await new_meter(channel, "users", M.AGGREGATION_UNIQUE_COUNT, "user")
    for at, user in USERS:
        await record(app, account.id, users, [(at, "1")], user=user)
    await record(app, account.id, users, [(day(3), "1")])  # without the property: not counted

    summary = await summary_of(usage, account.id, START, END)

    meters = by_service(summary)
    assert {code: meters[code].quantity.value for code in EXPECTED} == EXPECTED
    assert meters["calls"].record_count == 3 and meters["users"].record_count == 4
    assert meters["storage"].aggregation == M.AGGREGATION_WEIGHTED_SUM
    # The pure aggregation agrees with what the store computed.
    stored = Decimal(EXPECTED["storage"])
    assert (
        aggregation.weighted_mean(
            Decimal(4), [(day(15.5), Decimal(-1)), (day(20), Decimal("0.5"))], START, END
        )
        == stored
    )
    assert (summary.subscription_id, summary.HasField("total")) == ("", False)  # nothing priced
    assert (summary.start_time, summary.end_time) == (ts(START), ts(END))
    assert summary.read_time.ToDatetime(tzinfo=UTC) > START - timedelta(days=3650)
    # An empty range: no meter has usage there.
    empty = await summary_of(usage, account.id, day(40), day(41))
    assert list(empty.meters) == []


def _graduated() -> plan_pb2.Price:
    # Up to 100 units at 0, then 0.015 each: a free allowance and a per-unit overage.
    tiers = [
        plan_pb2.Tier(up_to=decimal_pb2.Decimal(value="100"), unit_price=decimal_pb2.Decimal(value="0")),
        plan_pb2.Tier(unit_price=decimal_pb2.Decimal(value="0.015")),
    ]
    return plan_pb2.Price(graduated=plan_pb2.TieredPrice(tiers=tiers))


async def _on_test_clock(channel: grpc.aio.Channel, account_id: str, at: datetime) -> None:
    clocks = test_clock_pb2_grpc.TestClockServiceStub(channel)
    clock = await clocks.CreateTestClock(
        test_clock_pb2.CreateTestClockRequest(test_clock=test_clock_pb2.TestClock(frozen_time=ts(at)))
    )
    await clocks.AttachAccount(test_clock_pb2.AttachAccountRequest(id=clock.id, account_id=account_id))


async def test_summary_of_the_current_period_priced_by_the_plan_and_recorded_prices(
    app: App, channel: grpc.aio.Channel, usage: UsageServiceStub
) -> None:
    account = await new_account(channel, 2)
    api = await new_meter(channel, "api-calls", M.AGGREGATION_SUM)
    sms = await new_meter(channel, "sms", M.AGGREGATION_COUNT)
    plans = plan_pb2_grpc.PlanServiceStub(channel)
    plan = await plans.CreatePlan(
        plan_pb2.CreatePlanRequest(
            plan=plan_pb2.Plan(
                code="metered",
                display_name="Metered",
                currency_code="USD",
                billing_interval=plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_MONTH, count=1),
                metered_charges=[
                    plan_pb2.MeteredCharge(meter_id=api.id, description="API calls", price=_graduated())
                ],
            )
        )
    )
    await _on_test_clock(channel, account.id, START)
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    sub = await subs.CreateSubscription(
        subscription_pb2.CreateSubscriptionRequest(
            subscription=subscription_pb2.Subscription(account_id=account.id, plan_id=plan.id)
        )
    )
    assert (sub.current_period_start, sub.current_period_end) == (ts(START), ts(END))
    # 100 free + 33.3 at 0.015 = 0.4995 -> 0.50 (rounded once, half-up).
    await record(app, account.id, api, [(START, "60"), (day(5), "75.3"), (day(6), "-2")])
    await record(app, account.id, api, [(day(7), "1000")], price="0.00105")  # own price: 1.05
    await record(app, account.id, api, [(day(8), "3"), (day(9), "0.333")], price="0.5")  # 1.6665
    await record(app, account.id, sms, [(day(1), "1"), (day(2), "1")], price="0.0333")  # 0.0666
    await record(app, account.id, api, [(END, "5000")])  # the next period

    summary = await usage.GetUsageSummary(pb.GetUsageSummaryRequest(account_id=account.id))

    assert (summary.start_time, summary.end_time, summary.subscription_id) == (ts(START), ts(END), sub.id)
    meters = by_service(summary)
    assert (meters["api-calls"].quantity.value, meters["api-calls"].record_count) == ("133.3", 6)
    planned, recorded = meters["api-calls"].charges
    assert (planned.description, planned.quantity.value, planned.amount.amount_minor) == (
        "API calls",
        "133.3",
        50,
    )
    assert not planned.recorded_prices
    # 1000 x 0.00105 + 3 x 0.5 + 0.333 x 0.5 = 2.7165 -> 2.72: the records' amounts summed, then rounded once.
    assert (recorded.quantity.value, recorded.amount.amount_minor, recorded.recorded_prices) == (
        "1003.333",
        272,
        True,
    )
    [sms_charge] = meters["sms"].charges
    assert (meters["sms"].quantity.value, sms_charge.amount.amount_minor) == ("0", 7)
    assert (summary.total.currency_code, summary.total.amount_minor) == ("USD", 50 + 272 + 7)


async def test_a_range_without_a_subscription_prices_only_recorded_prices_in_the_account_currency(
    app: App, channel: grpc.aio.Channel, usage: UsageServiceStub
) -> None:
    account = await new_account(channel, 3, currency="EUR")
    meter = await new_meter(channel, "gpu", M.AGGREGATION_SUM)
    await record(app, account.id, meter, [(day(1), "2.5")], price="1.1")
    summary = await summary_of(usage, account.id, START, END)
    [charge] = by_service(summary)["gpu"].charges
    assert (charge.amount.currency_code, charge.amount.amount_minor) == ("EUR", 275)
    assert (summary.subscription_id, summary.total.amount_minor) == ("", 275)


async def test_summary_errors_name_the_field(channel: grpc.aio.Channel, usage: UsageServiceStub) -> None:
    account = await new_account(channel, 4)
    error = await failing(usage.GetUsageSummary(pb.GetUsageSummaryRequest(account_id=account.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == "NO_CURRENT_PERIOD"
    assert details(error).info.metadata["field"] == "start_time"
    only_start = pb.GetUsageSummaryRequest(account_id=account.id, start_time=ts(START))
    error = await failing(usage.GetUsageSummary(only_start))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "end_time" in details(error).violations
    only_end = pb.GetUsageSummaryRequest(account_id=account.id, end_time=ts(END))
    assert "start_time" in details(await failing(usage.GetUsageSummary(only_end))).violations
    error = await failing(summary_of(usage, account.id, END, START))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "end_time" in details(error).violations
    error = await failing(summary_of(usage, account.id, START, START))
    assert "end_time" in details(error).violations
    error = await failing(summary_of(usage, "acct_nobody", START, END))
    assert error.code() == grpc.StatusCode.NOT_FOUND and reason(error) == "ACCOUNT_NOT_FOUND"


async def test_list_records_pages_oldest_first_with_filters(
    app: App, channel: grpc.aio.Channel, usage: UsageServiceStub
) -> None:
    account = await new_account(channel, 5)
    other = await new_account(channel, 6)
    api = await new_meter(channel, "api", M.AGGREGATION_SUM)
    disk = await new_meter(channel, "disk", M.AGGREGATION_SUM)
    same_time = await record(app, account.id, api, [(day(2), "1"), (day(2), "2"), (day(2), "3")], region="eu")
    early = await record(app, account.id, api, [(day(1), "0.5")], region="us")
    late = await record(app, account.id, disk, [(day(3), "7")], region="eu", tier="hot")
    await record(app, other.id, api, [(day(2), "100")], region="eu")

    seen: list[str] = []
    token = ""
    while True:
        page = await usage.ListUsageRecords(
            pb.ListUsageRecordsRequest(account_id=account.id, page_size=2, page_token=token)
        )
        seen += [r.id for r in page.usage_records]
        token = page.next_page_token
        if not token:
            break
    assert seen == early + sorted(same_time) + late

    async def ids_for(**filters: Any) -> list[str]:
        reply = await usage.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=account.id, **filters))
        return [r.id for r in reply.usage_records]

    assert await ids_for(service="disk") == late
    assert await ids_for(properties=["region=eu"]) == sorted(same_time) + late
    assert await ids_for(properties=["region=eu", "tier=hot"]) == late
    assert await ids_for(properties=["region=mars"]) == []
    assert await ids_for(start_time=ts(day(2)), end_time=ts(day(3))) == sorted(same_time)
    [first] = (
        await usage.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=account.id, page_size=1))
    ).usage_records
    assert (first.units_consumed.value, first.properties["region"], first.meter_id) == ("0.5", "us", api.id)

    error = await failing(ids_for(properties=["region=eu", "no-equals-sign"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "properties[1]" in details(error).violations
    error = await failing(ids_for(start_time=ts(day(3)), end_time=ts(day(3))))
    assert "end_time" in details(error).violations
    page = await usage.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=account.id, page_size=1))
    changed = pb.ListUsageRecordsRequest(
        account_id=account.id, page_token=page.next_page_token, service="api"
    )
    assert "page_token" in details(await failing(usage.ListUsageRecords(changed))).violations
    error = await failing(usage.ListUsageRecords(pb.ListUsageRecordsRequest(account_id="acct_nobody")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_customer_reads_only_its_own_usage(app: App, channel: grpc.aio.Channel) -> None:
    mine = await new_account(channel, 7)
    theirs = await new_account(channel, 8)
    meter = await new_meter(channel, "api", M.AGGREGATION_COUNT)
    await record(app, mine.id, meter, [(day(1), "1")])
    await record(app, theirs.id, meter, [(day(1), "1")])
    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=mine.id)) as customer_channel:
        customer = UsageServiceStub(customer_channel)
        own = await customer.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=mine.id))
        assert [r.account_id for r in own.usage_records] == [mine.id]
        assert by_service(await summary_of(customer, mine.id, START, END))["api"].quantity.value == "1"
        for call in (
            customer.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=theirs.id)),
            summary_of(customer, theirs.id, START, END),
        ):
            error = await failing(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND and reason(error) == "ACCOUNT_NOT_FOUND"


async def test_a_service_token_needs_usage_read(app: App, channel: grpc.aio.Channel) -> None:
    account = await new_account(channel, 9)
    request = pb.ListUsageRecordsRequest(account_id=account.id)
    async with channel_as(app, mint(app, Role.SERVICE, scopes=frozenset({"usage:write"}))) as writer_channel:
        error = await failing(UsageServiceStub(writer_channel).ListUsageRecords(request))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and reason(error) == "SCOPE_MISSING"
    async with channel_as(app, mint(app, Role.SERVICE, scopes=frozenset({"usage:read"}))) as reader_channel:
        reader = UsageServiceStub(reader_channel)
        assert list((await reader.ListUsageRecords(request)).usage_records) == []
        assert list((await summary_of(reader, account.id, START, END)).meters) == []


async def test_a_deleted_account_keeps_its_records_listed_but_has_no_summary(
    app: App, channel: grpc.aio.Channel, usage: UsageServiceStub
) -> None:
    account = await new_account(channel, 10)
    meter = await new_meter(channel, "api", M.AGGREGATION_SUM)
    [stored] = await record(app, account.id, meter, [(day(1), "2")])
    await account_pb2_grpc.AccountServiceStub(channel).DeleteAccount(
        account_pb2.DeleteAccountRequest(id=account.id)
    )
    listed = await usage.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=account.id))
    assert [r.id for r in listed.usage_records] == [stored]
    error = await failing(summary_of(usage, account.id, START, END))
    assert error.code() == grpc.StatusCode.NOT_FOUND and reason(error) == "ACCOUNT_NOT_FOUND"


async def test_garbage_is_refused_naming_the_field(
    channel: grpc.aio.Channel, usage: UsageServiceStub
) -> None:
    account = await new_account(channel, 11)
    far = timestamp_pb2.Timestamp(seconds=10**12)  # past year 9999
    for call, field in (
        (
            usage.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=account.id, start_time=far)),
            "start_time",
        ),
        (
            usage.GetUsageSummary(
                pb.GetUsageSummaryRequest(account_id=account.id, start_time=ts(START), end_time=far)
            ),
            "end_time",
        ),
        (
            usage.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=account.id, page_size=-1)),
            "page_size",
        ),
        (
            usage.ListUsageRecords(pb.ListUsageRecordsRequest(account_id=account.id, page_token="garbage")),
            "page_token",
        ),
        (usage.ListUsageRecords(pb.ListUsageRecordsRequest()), "account_id"),
        (usage.GetUsageSummary(pb.GetUsageSummaryRequest()), "account_id"),
    ):
        error = await failing(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in details(error).violations, field
    long_id = pb.ListUsageRecordsRequest(account_id="acct_" + "x" * 500, service="s" * 500)
    assert (await failing(usage.ListUsageRecords(long_id))).code() == grpc.StatusCode.NOT_FOUND
    long_service = pb.ListUsageRecordsRequest(account_id=account.id, service="s" * 500)
    assert list((await usage.ListUsageRecords(long_service)).usage_records) == []

"""Usage billed by one subscription, never two (billing_svc/subscriptions/meters.py), on a test clock.

An account's metered subscription canceled now (with Stripe's `invoice_now`) frees its meter: a new
subscription on the same meter may start at once. Usage up to the cancel is on the old
subscription's final invoice; usage from the new one's start is on the new one's invoices only,
although its first period starts at the local midnight before it (its usage is billed, and
GetUsageSummary sums it, from its start time). And records with their own price are billed by
the subscription whose plan charges their meter, not by every subscription of the account that
bills usage; on a meter no subscription charges (the seed's (service, units, unit price) records on
a flat plan), by the account's oldest subscription live at the record's time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import grpc
import pytest
from google.type import decimal_pb2

from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import meter_pb2, meter_pb2_grpc
from tally.billing.v1 import usage_pb2 as upb
from tally.billing.v1.usage_pb2_grpc import UsageServiceStub
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as spb
from tests.billing_support import MONTH, usd
from tests.scenarios.billing import Ledger, at, ts, utc
from tests.scenarios.conftest import Simulation
from tests.scenarios.usage_plan import invoices_of, lines_of

pytestmark = pytest.mark.scenario

Status = ipb.Invoice.Status
GRACE = timedelta(hours=1)
FEE = 1000  # $10.00 a month, in advance; each unit $1.00, in arrears, no minimum


def dec(value: str) -> decimal_pb2.Decimal:
    return decimal_pb2.Decimal(value=value)


async def new_meter(channel: grpc.aio.Channel, code: str) -> meter_pb2.Meter:
    return await meter_pb2_grpc.MeterServiceStub(channel).CreateMeter(
        meter_pb2.CreateMeterRequest(
            meter=meter_pb2.Meter(code=code, display_name=code, aggregation=meter_pb2.Meter.AGGREGATION_SUM)
        )
    )


async def dollar_a_unit(channel: grpc.aio.Channel, code: str, meter: meter_pb2.Meter) -> plan_pb2.Plan:
    price = plan_pb2.Price(per_unit=plan_pb2.PerUnitPrice(unit_price=dec("1")))
    plan = plan_pb2.Plan(
        code=code,
        display_name=code,
        currency_code="USD",
        billing_interval=MONTH,
        base_fee=usd(FEE),
        metered_charges=[plan_pb2.MeteredCharge(meter_id=meter.id, description=meter.code, price=price)],
    )
    return await plan_pb2_grpc.PlanServiceStub(channel).CreatePlan(plan_pb2.CreatePlanRequest(plan=plan))


async def record(
    usage: UsageServiceStub, account_id: str, service: str, units: str, when: datetime, price: str = ""
) -> None:
    record = upb.UsageRecord(service=service, units_consumed=dec(units), event_time=ts(when))
    if price:
        record.price_per_unit.CopyFrom(dec(price))
    await usage.CreateUsageRecord(upb.CreateUsageRecordRequest(account_id=account_id, usage_record=record))


def usage_of(invoice: ipb.Invoice) -> list[tuple[str, int, datetime, datetime]]:
    return [
        (line.quantity.value, line.amount.amount_minor, at(line.period_start), at(line.period_end))
        for line in invoice.lines
        if line.kind == ipb.InvoiceLine.KIND_USAGE
    ]


async def test_a_meter_freed_by_a_cancel_now_bills_each_usage_on_one_subscription_only(
    usage_simulation: Simulation,
) -> None:
    channel = usage_simulation.channel
    usage = UsageServiceStub(channel)
    meter = await new_meter(channel, "calls")
    plan = await dollar_a_unit(channel, "calls", meter)
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(1)
    old = await ledger.subscribe(account, plan.id)
    await ledger.advance(utc(2027, 3, 10))
    await record(usage, account, "calls", "40", utc(2027, 3, 10))
    cancel_time = utc(2027, 3, 16, 12)
    await ledger.advance(cancel_time)
    await record(usage, account, "calls", "5", utc(2027, 3, 16, 11))  # the new period's day, before it starts

    # While the old subscription is live, the meter is its own.
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await ledger.subscribe(account, plan.id)
    assert taken.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    await ledger.subs.CancelSubscription(
        spb.CancelSubscriptionRequest(
            id=old.id, proration_behavior=spb.PRORATION_BEHAVIOR_NONE, invoice_now=True
        )
    )
    new = await ledger.subscribe(account, plan.id)
    assert at(new.start_time) == cancel_time and at(new.current_period_start) == utc(2027, 3, 16)
    await record(usage, account, "calls", "7", cancel_time)  # from the new start on: the new one's
    # The bill so far agrees: the new subscription's period, from its start, and its 7 units only.
    summary = await usage.GetUsageSummary(upb.GetUsageSummaryRequest(account_id=account))
    assert (summary.subscription_id, at(summary.start_time)) == (new.id, cancel_time)
    assert [(m.service, m.quantity.value) for m in summary.meters] == [("calls", "7")]
    await ledger.advance(utc(2027, 4, 1))
    await record(usage, account, "calls", "30", utc(2027, 4, 1))

    await ledger.advance(utc(2027, 4, 16) + GRACE)
    invoices = await invoices_of(channel, account)
    [final] = [i for i in invoices if i.subscription_id == old.id and usage_of(i)]
    [renewal] = [i for i in invoices if i.subscription_id == new.id and usage_of(i)]
    assert len(invoices) == 4  # and each one's sign-up invoice, of its fee only
    # The old one's final invoice: its 45 units to the cancel, and nothing else.
    assert usage_of(final) == [("45", 4500, utc(2027, 3, 1, 9), cancel_time)]
    assert final.status == Status.STATUS_OPEN and final.total.amount_minor == 4500
    # The new one's first period, from its start (not from midnight): the 37 units since, only.
    assert usage_of(renewal) == [("37", 3700, cancel_time, utc(2027, 4, 16))]
    assert sorted(lines_of(renewal)) == sorted([("SUBSCRIPTION_FEE", "1", FEE), ("USAGE", "37", 3700)])
    # Every unit recorded was billed exactly once.
    assert sum(int(line[0]) for invoice in (final, renewal) for line in usage_of(invoice)) == 40 + 5 + 7 + 30


async def test_records_with_their_own_price_are_billed_by_the_subscription_charging_their_meter(
    usage_simulation: Simulation,
) -> None:
    """Two subscriptions of one account on two meters both bill usage; a record with its own price on
    the first meter is on the first one's invoice only (it used to be on both)."""
    channel = usage_simulation.channel
    usage = UsageServiceStub(channel)
    calls, sms = await new_meter(channel, "calls"), await new_meter(channel, "sms")
    calls_plan = await dollar_a_unit(channel, "calls", calls)
    sms_plan = await dollar_a_unit(channel, "sms", sms)
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(2)
    on_calls = await ledger.subscribe(account, calls_plan.id)
    on_sms = await ledger.subscribe(account, sms_plan.id)
    await ledger.advance(utc(2027, 3, 10))
    await record(usage, account, "calls", "3", utc(2027, 3, 10), price="2.50")  # 7.50, its own price
    await record(usage, account, "sms", "4", utc(2027, 3, 10))

    await ledger.advance(utc(2027, 4, 1) + GRACE)
    renewals = {
        invoice.subscription_id: invoice
        for invoice in await invoices_of(channel, account)
        if any(line.kind == ipb.InvoiceLine.KIND_USAGE for line in invoice.lines)
    }
    start, end = utc(2027, 3, 1, 9), utc(2027, 4, 1)
    assert sorted(usage_of(renewals[on_calls.id])) == sorted([("0", 0, start, end), ("3", 750, start, end)])
    assert usage_of(renewals[on_sms.id]) == [("4", 400, start, end)]


async def flat(channel: grpc.aio.Channel, code: str) -> plan_pb2.Plan:
    """A plan of a monthly fee only: no metered charge, no minimum."""
    plan = plan_pb2.Plan(
        code=code, display_name=code, currency_code="USD", billing_interval=MONTH, base_fee=usd(FEE)
    )
    return await plan_pb2_grpc.PlanServiceStub(channel).CreatePlan(plan_pb2.CreatePlanRequest(plan=plan))


async def flat_account(
    simulation: Simulation, code: str, n: int
) -> tuple[grpc.aio.Channel, UsageServiceStub, plan_pb2.Plan, Ledger, str]:
    """A "reports" meter no plan charges, a flat plan, and account `n` on a test clock from Mar 1, 09:00."""
    channel = simulation.channel
    await new_meter(channel, "reports")
    plan = await flat(channel, code)
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    return channel, UsageServiceStub(channel), plan, ledger, await ledger.account(n)


def recorded_minor(invoice: ipb.Invoice) -> int:
    return sum(line.amount.amount_minor for line in invoice.lines if line.kind == ipb.InvoiceLine.KIND_USAGE)


async def test_a_flat_plan_alone_bills_records_with_their_own_price_on_its_renewal(
    usage_simulation: Simulation,
) -> None:
    """Other teams record (service, units, unit price) for an account on a flat plan: no plan charges
    the meter, so its one subscription bills them on its renewal (before, no invoice billed them)."""
    channel, usage, plan, ledger, account = await flat_account(usage_simulation, "flat-alone", 3)
    subscription = await ledger.subscribe(account, plan.id)
    await ledger.advance(utc(2027, 3, 10))
    await record(usage, account, "reports", "3", utc(2027, 3, 10), price="2.50")
    await record(usage, account, "reports", "2", utc(2027, 3, 10), price="0.125")
    await record(usage, account, "reports", "9", utc(2027, 3, 10))  # no price: no plan prices it

    await ledger.advance(utc(2027, 4, 1) + GRACE)
    [signup, renewal] = await invoices_of(channel, account)
    assert {signup.subscription_id, renewal.subscription_id} == {subscription.id}
    assert usage_of(signup) == []
    # 3 x 2.50 + 2 x 0.125 = 7.75, on one line, rounded once.
    assert usage_of(renewal) == [("5", 775, utc(2027, 3, 1, 9), utc(2027, 4, 1))]
    assert renewal.status == Status.STATUS_OPEN and renewal.total.amount_minor == FEE + 775


async def test_two_flat_plans_bill_each_own_price_record_once_on_the_oldest_live_one(
    usage_simulation: Simulation,
) -> None:
    channel, usage, plan, ledger, account = await flat_account(usage_simulation, "flat-two", 4)
    older = await ledger.subscribe(account, plan.id)
    await ledger.advance(utc(2027, 3, 3))
    await record(usage, account, "reports", "1", utc(2027, 3, 3), price="1")  # the older one only is live
    await ledger.advance(utc(2027, 3, 5, 15))
    newer = await ledger.subscribe(account, plan.id)  # its periods start on the 5th
    for when, units in ((utc(2027, 3, 10), "2"), (utc(2027, 4, 3), "4"), (utc(2027, 4, 20), "8")):
        await ledger.advance(when)
        await record(usage, account, "reports", units, when, price="1")

    await ledger.advance(utc(2027, 5, 6) + GRACE)
    invoices = await invoices_of(channel, account)
    billed = {
        (invoice.subscription_id, at(invoice.period_start)): recorded_minor(invoice) for invoice in invoices
    }
    # The older one bills all of them, month by month; the newer one none (both are live throughout).
    assert sum(billed.values()) == 1500
    assert sum(minor for (sub, _), minor in billed.items() if sub == newer.id) == 0
    older_usage = [usage_of(i) for i in invoices if i.subscription_id == older.id and usage_of(i)]
    assert older_usage == [
        [("3", 300, utc(2027, 3, 1, 9), utc(2027, 4, 1))],
        [("12", 1200, utc(2027, 4, 1), utc(2027, 5, 1))],
    ]


async def test_own_price_records_move_to_the_next_live_subscription_after_a_cancel_over_a_year(
    usage_simulation: Simulation,
) -> None:
    """The oldest flat subscription is canceled now (with its final invoice) in June: records from
    then on are the next oldest's, a metered one's. Over a year of renewals each own-price record is
    billed once: the invoices' usage adds up to units x price of every record, exactly."""
    channel = usage_simulation.channel
    usage = UsageServiceStub(channel)
    await new_meter(channel, "reports")
    calls = await new_meter(channel, "calls")
    flat_plan = await flat(channel, "flat-cancel")
    metered = await dollar_a_unit(channel, "calls-cancel", calls)
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(5)
    older = await ledger.subscribe(account, flat_plan.id)
    await ledger.advance(utc(2027, 3, 2, 12))
    newer = await ledger.subscribe(account, metered.id)
    cancel_time = utc(2027, 6, 15, 12)
    recorded: dict[str, int] = {older.id: 0, newer.id: 0}  # minor units each should bill
    when = utc(2027, 3, 2, 18)
    n, canceled = 0, False
    while when < utc(2028, 3, 1):
        if when >= cancel_time and not canceled:
            canceled = True
            await ledger.advance(cancel_time)
            await ledger.subs.CancelSubscription(
                spb.CancelSubscriptionRequest(
                    id=older.id, proration_behavior=spb.PRORATION_BEHAVIOR_NONE, invoice_now=True
                )
            )
        await ledger.advance(when)
        n += 1
        units, price = str(n), "1.25" if n % 2 else "0.50"
        await record(usage, account, "reports", units, when, price=price)
        await record(usage, account, "calls", "1", when)  # the metered plan's own meter, $1 a unit
        owner = older.id if when < cancel_time else newer.id
        recorded[owner] += int(n * (125 if n % 2 else 50))
        when += timedelta(days=11, hours=5)

    await ledger.advance(utc(2028, 3, 3) + GRACE)
    invoices = await invoices_of(channel, account)
    reports = {
        line.meter_id
        for invoice in invoices
        for line in invoice.lines
        if line.meter_id and line.meter_id != calls.id
    }
    assert len(reports) == 1
    billed: dict[str, int] = {older.id: 0, newer.id: 0}
    for invoice in invoices:
        assert invoice.status != Status.STATUS_DRAFT
        billed[invoice.subscription_id] += sum(
            line.amount.amount_minor for line in invoice.lines if line.meter_id in reports
        )
    assert billed == recorded and recorded[older.id] > 0 and recorded[newer.id] > 0
    assert sum(billed.values()) == sum(recorded.values())
    # The metered plan's own usage, $1 a call, is its own throughout, once.
    calls_billed = sum(
        line.amount.amount_minor
        for invoice in invoices
        for line in invoice.lines
        if line.meter_id == calls.id
    )
    assert calls_billed == 100 * n

"""A year of a usage plan on a test clock: the sign-up invoice, then one invoice per renewal with the
new period's fee in advance and the closed period's usage in arrears (its tier breakdown, a
minimum-spend true-up), held as a draft for the grace period so that late usage lands on it.

The plan's graduated charge is Lago's worked example of its graduated charge model
(https://getlago.com/docs/guide/plans/charges/charge-models/graduated): $1 a unit for the first
100 units, $0.50 for the next 100, $0.10 for every unit beyond; each tier prices only the units
inside it. Every amount below is computed here, independently of billing_svc.catalog.pricing, from
that rule: 250 units are 100 x 1 + 100 x 0.50 + 50 x 0.10 = $155.00.

Usage recorded after its period's invoice was finalized, timed in that period, is refused (Lago's
rule, not Stripe's, which bills it on the next invoice): a finalized invoice never changes, and
Tally keeps no record of which usage an invoice billed, so the next one could not tell it apart.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import grpc
import pytest

from core.settings import Settings
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1.usage_pb2_grpc import UsageServiceStub
from tally.subscription.v1 import subscription_pb2 as spb
from tests.billing_support import new_plan
from tests.scenarios.billing import Ledger, at, utc
from tests.scenarios.conftest import Simulation, forget_scenario_usage, simulated
from tests.scenarios.usage_plan import FEE, MINIMUM, Kind, invoices_of, lines_of, record, usage_plan
from tests.support import details, failing

pytestmark = pytest.mark.scenario

Status = ipb.Invoice.Status
GRACE = timedelta(hours=1)  # the default invoice_grace_period_seconds
# Units recorded in each month from March 2027 to February 2028 (some under the minimum).
MONTHLY = ["40", "150", "0", "250", "100", "100.5", "30", "201", "60", "999", "5", "180"]
LATE = {1: "20", 6: "70"}  # month index -> units recorded in the grace period, timed in the month


def expected_tiers(units: Decimal) -> list[tuple[int, Decimal, Decimal]]:
    """(tier, units in it, exact amount), by the rule in the module doc, written out."""
    parts = [(0, min(units, Decimal(100)), Decimal(1))]
    if units > 100:
        parts.append((1, min(units, Decimal(200)) - 100, Decimal("0.50")))
    if units > 200:
        parts.append((2, units - 200, Decimal("0.10")))
    return [(tier, count, count * price) for tier, count, price in parts]


def cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def month_start(index: int) -> datetime:
    """The start of the index-th month from March 2027 (the billing periods, in UTC)."""
    year, month = divmod(2 + index, 12)
    return utc(2027 + year, month + 1, 1)


def _expected_renewal(units: Decimal) -> tuple[list[tuple[str, str, int]], list[tuple[int, str, str]]]:
    parts = expected_tiers(units)
    usage_cents = cents(sum((amount for _, _, amount in parts), Decimal(0)))
    lines = [("SUBSCRIPTION_FEE", "1", FEE), ("USAGE", format(units, "f"), usage_cents)]
    if usage_cents < MINIMUM:
        lines.append(("MINIMUM_SPEND", "1", MINIMUM - usage_cents))
    tiers = [(tier, format(count, "f"), format(amount, "f")) for tier, count, amount in parts]
    return lines, tiers


def _tiers(line: ipb.InvoiceLine) -> list[tuple[int, str, str]]:
    return [(tier.tier_index, tier.units.value, tier.amount.value) for tier in line.tiers]


def _same_number(text: str) -> Decimal:
    return Decimal(text)


async def test_a_year_of_usage_in_arrears_with_tiers_a_minimum_and_a_grace_period(
    usage_simulation: Simulation,
) -> None:
    simulation = usage_simulation
    channel = simulation.channel
    usage = UsageServiceStub(channel)
    meter, plan = await usage_plan(channel)
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(1)
    sub = await ledger.subscribe(account, plan.id)

    # The sign-up invoice: March's fee in advance, finalized at once; no usage has been billed yet.
    [signup] = await invoices_of(channel, account)
    assert signup.status == Status.STATUS_OPEN and signup.number == "INV-000001"
    assert lines_of(signup) == [("SUBSCRIPTION_FEE", "1", FEE)]

    for index, units in enumerate(MONTHLY):
        start, end = month_start(index), month_start(index + 1)
        await ledger.advance(start + timedelta(days=10))
        await record(usage, account, units, start + timedelta(days=10))
        billed = Decimal(units)

        # The renewal: a draft with the usage recorded so far, for the grace period.
        await ledger.advance(end)
        draft = (await invoices_of(channel, account))[-1]
        assert draft.status == Status.STATUS_DRAFT and draft.number == ""
        assert draft.reason == ipb.Invoice.REASON_SUBSCRIPTION_CYCLE and draft.subscription_id == sub.id
        assert lines_of(draft) == _expected_renewal(billed)[0]

        if index in LATE:  # usage timed in the closed month, received in the grace period
            await ledger.advance(end + GRACE / 2)
            await record(usage, account, LATE[index], end - timedelta(minutes=1))
            billed += Decimal(LATE[index])

        await ledger.advance(end + GRACE)  # the grace period is over: the advance finalizes it
        invoices = await invoices_of(channel, account)
        assert len(invoices) == index + 2
        done = invoices[-1]
        assert done.id == draft.id and done.status == Status.STATUS_OPEN
        assert done.number == f"INV-{index + 2:06d}"
        lines, tiers = _expected_renewal(billed)
        assert lines_of(done) == lines, f"month {index}"
        fee, usage_line, *true_up = done.lines
        assert (at(fee.period_start), at(fee.period_end)) == (end, month_start(index + 2))  # in advance
        # In arrears; the first month's usage from the subscription's start (09:00), not from midnight.
        billed_from = max(start, utc(2027, 3, 1, 9))
        assert (at(usage_line.period_start), at(usage_line.period_end)) == (billed_from, end)
        assert usage_line.meter_id == meter.id and not usage_line.HasField("unit_price")
        assert [(t, _same_number(u), _same_number(a)) for t, u, a in _tiers(usage_line)] == [
            (t, Decimal(u), Decimal(a)) for t, u, a in tiers
        ]
        assert done.total.amount_minor == sum(amount for _, _, amount in lines)
        assert done.total.amount_minor == FEE + max(MINIMUM, usage_line.amount.amount_minor)
        assert [line.kind for line in true_up] == ([Kind.KIND_MINIMUM_SPEND] if true_up else [])

    # 250 units (June): Lago's rule gives 100 + 50 + 5 = $155.00, above the minimum: no true-up.
    june = (await invoices_of(channel, account))[4]
    assert [line.amount.amount_minor for line in june.lines] == [FEE, 15500]


async def test_usage_after_the_finalized_invoice_is_refused_for_its_period_and_billed_in_the_next(
    usage_simulation: Simulation,
) -> None:
    simulation = usage_simulation
    channel = simulation.channel
    usage = UsageServiceStub(channel)
    _, plan = await usage_plan(channel)
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(2)
    await ledger.subscribe(account, plan.id)
    await ledger.advance(utc(2027, 3, 20))
    await record(usage, account, "120", utc(2027, 3, 20))
    await ledger.advance(utc(2027, 4, 1) + GRACE)  # March's invoice is finalized

    error = await failing(record(usage, account, "5", utc(2027, 3, 31, 23)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(details(error).violations) == ["usage_record.event_time"]

    await ledger.advance(utc(2027, 4, 1, 2))
    await record(usage, account, "7", utc(2027, 4, 1, 2))  # April's: accepted, billed in May
    await ledger.advance(utc(2027, 5, 1) + GRACE)
    march, april = (await invoices_of(channel, account))[1:]
    assert lines_of(march) == [("SUBSCRIPTION_FEE", "1", FEE), ("USAGE", "120", 11000)]
    assert lines_of(april) == [
        ("SUBSCRIPTION_FEE", "1", FEE),
        ("USAGE", "7", 700),
        ("MINIMUM_SPEND", "1", MINIMUM - 700),
    ]


async def test_an_upgrade_and_a_downgrade_land_on_the_next_invoices(simulation: Simulation) -> None:
    """Prorations are pending items until the next renewal's invoice takes them (Stripe's default,
    `proration_behavior=create_prorations`): an upgrade's net charge is added to it, a downgrade's
    net credit lowers it, and a credit beyond its total becomes the account's credit balance,
    which the invoices after it take."""
    channel = simulation.channel
    small = await new_plan(channel, "small", base_minor=3000)
    large = await new_plan(channel, "large", base_minor=6000)
    tiny = await new_plan(channel, "tiny", base_minor=500)
    ledger = await Ledger.start(channel, utc(2027, 4, 1))
    account = await ledger.account(3)
    sub = await ledger.subscribe(account, small.id)

    # 16 April is half of April's 30 days: credit 3000 / 2, charge 6000 / 2.
    await ledger.advance(utc(2027, 4, 16))
    await ledger.change(sub.id, plan_id=large.id)
    await ledger.advance(utc(2027, 5, 1))
    may = (await invoices_of(channel, account))[-1]
    # The prorations of April (made first), then May's fee in advance.
    assert lines_of(may) == [
        ("PRORATION", "1", -1500),
        ("PRORATION", "1", 3000),
        ("SUBSCRIPTION_FEE", "1", 6000),
    ]
    assert (may.status, may.total.amount_minor, may.amount_due.amount_minor) == (
        Status.STATUS_OPEN,
        7500,
        7500,
    )

    # 16 June is half of June: credit 6000 / 2, charge 500 / 2; July's invoice comes to -2250.
    await ledger.advance(utc(2027, 6, 16))
    await ledger.change(sub.id, plan_id=tiny.id)
    await ledger.advance(utc(2027, 9, 1))
    july, august, september = (await invoices_of(channel, account))[-3:]
    assert lines_of(july) == [
        ("PRORATION", "1", -3000),
        ("PRORATION", "1", 250),
        ("SUBSCRIPTION_FEE", "1", 500),
    ]
    assert (july.status, july.total.amount_minor, july.amount_due.amount_minor) == (
        Status.STATUS_PAID,
        -2250,
        0,
    )
    # The 2250 credited pays August's 500 and September's 500; 1250 is left.
    assert [
        (i.total.amount_minor, i.credits_applied.amount_minor, i.amount_due.amount_minor)
        for i in (
            august,
            september,
        )
    ] == [(500, 500, 0), (500, 500, 0)]


async def test_without_a_grace_period_the_renewal_bills_its_usage_finalized_at_once(
    settings: Settings,
) -> None:
    no_grace = settings.model_copy(update={"invoice_grace_period_seconds": 0})
    async with simulated(no_grace) as simulation:
        channel = simulation.channel
        _, plan = await usage_plan(channel)
        ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
        account = await ledger.account(4)
        await ledger.subscribe(account, plan.id)
        await ledger.advance(utc(2027, 3, 15))
        await record(UsageServiceStub(channel), account, "250", utc(2027, 3, 15))
        await ledger.advance(utc(2027, 4, 1))
        _, april = await invoices_of(channel, account)
        assert april.status == Status.STATUS_OPEN and at(april.finalize_time) == utc(2027, 4, 1)
        assert lines_of(april) == [("SUBSCRIPTION_FEE", "1", FEE), ("USAGE", "250", 15500)]
        await forget_scenario_usage(simulation.app)


async def test_a_cancel_at_the_period_end_bills_the_last_period_s_usage(usage_simulation: Simulation) -> None:
    channel = usage_simulation.channel
    _, plan = await usage_plan(channel)
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(5)
    sub = await ledger.subscribe(account, plan.id)
    await ledger.advance(utc(2027, 3, 10))
    await record(UsageServiceStub(channel), account, "90", utc(2027, 3, 10))
    await ledger.subs.CancelSubscription(spb.CancelSubscriptionRequest(id=sub.id, at_period_end=True))
    work = await ledger.advance(utc(2027, 4, 1) + GRACE)
    assert [w.kind for w in work] == ["CANCELLATION"]
    _, last = await invoices_of(channel, account)
    # No fee (nothing follows); March's 90 units, above the minimum.
    assert lines_of(last) == [("USAGE", "90", 9000)]
    assert last.status == Status.STATUS_OPEN and last.total.amount_minor == 9000


async def test_a_cancel_now_with_invoice_now_bills_the_usage_so_far_and_the_credit(
    usage_simulation: Simulation,
) -> None:
    """Stripe's `invoice_now` on a cancel: the final invoice bills the metered usage not invoiced
    yet and the pending proration items, at once. Here 250 units by 16 March are $155.00 (the
    module doc's rule, above the minimum, so no true-up), and the unused 16 of March's 31 days of
    the $20.00 fee are credited: 2000 x 16 / 31 = 1032.26, rounded once to 1032."""
    channel = usage_simulation.channel
    _, plan = await usage_plan(channel)
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(6)
    sub = await ledger.subscribe(account, plan.id)
    await ledger.advance(utc(2027, 3, 16))
    await record(UsageServiceStub(channel), account, "250", utc(2027, 3, 15))

    refused = await failing(
        ledger.subs.CancelSubscription(
            spb.CancelSubscriptionRequest(id=sub.id, at_period_end=True, invoice_now=True)
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "invoice_now" in details(refused).violations

    canceled = await ledger.subs.CancelSubscription(
        spb.CancelSubscriptionRequest(
            id=sub.id,
            proration_behavior=spb.PRORATION_BEHAVIOR_CREATE_PRORATIONS,
            invoice_now=True,
            request_id="cancel-now-invoice-now",
        )
    )
    assert canceled.state == spb.Subscription.STATE_CANCELED
    _, final = await invoices_of(channel, account)
    assert final.status == Status.STATUS_DRAFT  # it bills usage: a draft for the grace period
    assert sorted(lines_of(final)) == sorted([("USAGE", "250", 15500), ("PRORATION", "1", -1032)])
    # The usage from the start (09:00 on 1 March), the credit to the period's end.
    assert (at(final.period_start), at(final.period_end)) == (utc(2027, 3, 1, 9), utc(2027, 4, 1))

    await ledger.advance(utc(2027, 3, 16) + GRACE)
    _, final = await invoices_of(channel, account)
    assert final.status == Status.STATUS_OPEN and final.total.amount_minor == 15500 - 1032
    await ledger.advance(utc(2027, 4, 2))  # nothing follows a cancel
    assert len(await invoices_of(channel, account)) == 2

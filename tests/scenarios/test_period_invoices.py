"""CreateInvoice for a period bills the account's records with their own price that no subscription
bills (billing_svc/invoices/use_cases.py `create_invoice`), exactly once: the seed's "generate an
invoice for a start and end date" over usage other teams recorded as (service, units, unit price).

Accounts are on a test clock: the invoice is made at the clock's time, and records are timed by
their event time. Each expectation is computed here from the records themselves, with Decimal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

import grpc
import pytest
from google.type import decimal_pb2
from sqlalchemy import text

from core.settings import Settings
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc, meter_pb2
from tally.billing.v1.usage_pb2_grpc import UsageServiceStub
from tally.subscription.v1 import subscription_pb2 as spb
from tests.integration.test_gateway import Gateway, bearer, call
from tests.scenarios.billing import Ledger, at, ts, utc
from tests.scenarios.conftest import Simulation, forget_scenario_usage, simulated
from tests.scenarios.test_usage_per_subscription import flat, new_meter, record
from tests.support import details, eventually, failing, mint, reason

pytestmark = pytest.mark.scenario

Status = ipb.Invoice.Status
USAGE = ipb.InvoiceLine.KIND_USAGE
CENT = Decimal("0.01")


class Record(NamedTuple):
    service: str
    units: str
    when: datetime
    price: str = ""  # none: the plan would price it, and no plan does


def minor(amount: Decimal) -> int:
    """Rounded once, half-up, to cents."""
    return int(amount.quantize(CENT, rounding=ROUND_HALF_UP) / CENT)


def expected(records: Iterable[Record], *intervals: tuple[datetime, datetime]) -> dict[str, tuple[str, int]]:
    """Per service, the units and the rounded amount of the priced records timed in `intervals`."""
    units: dict[str, Decimal] = {}
    amounts: dict[str, Decimal] = {}
    for found in records:
        if found.price and any(low <= found.when < high for low, high in intervals):
            units[found.service] = units.get(found.service, Decimal(0)) + Decimal(found.units)
            amounts[found.service] = amounts.get(found.service, Decimal(0)) + (
                Decimal(found.units) * Decimal(found.price)
            )
    return {service: (str(units[service].normalize()), minor(amounts[service])) for service in units}


def billed(invoice: ipb.Invoice, codes: dict[str, str]) -> dict[str, tuple[str, int]]:
    """Per service, the units and amount of the invoice's usage lines (one line per meter)."""
    lines = [line for line in invoice.lines if line.kind == USAGE]
    assert len({line.meter_id for line in lines}) == len(lines)
    return {codes[line.meter_id]: (line.quantity.value, line.amount.amount_minor) for line in lines}


async def record_all(
    ledger: Ledger, usage: UsageServiceStub, account: str, records: Iterable[Record]
) -> None:
    """Each record at its time, the clock moved there first (records arrive as they happen)."""
    for found in sorted(records, key=lambda r: r.when):
        if found.when > ledger.now:
            await ledger.advance(found.when)
        await record(usage, account, found.service, found.units, found.when, price=found.price)


def period(
    start: datetime, end: datetime, account: str, *, finalize: bool = False
) -> ipb.CreateInvoiceRequest:
    return ipb.CreateInvoiceRequest(
        account_id=account, period_start=ts(start), period_end=ts(end), finalize=finalize
    )


async def recorded_account(
    channel: grpc.aio.Channel, n: int, records: Iterable[Record]
) -> tuple[meter_pb2.Meter, str]:
    """A "reports" meter and account `n` on a test clock from Mar 1, 09:00, with `records` recorded."""
    reports = await new_meter(channel, "reports")
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(n)
    await record_all(ledger, UsageServiceStub(channel), account, records)
    return reports, account


async def test_a_period_invoice_bills_own_price_records_of_an_account_without_a_subscription_once(
    usage_simulation: Simulation,
) -> None:
    channel = usage_simulation.channel
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    usage = UsageServiceStub(channel)
    reports, exports = await new_meter(channel, "reports"), await new_meter(channel, "exports")
    codes = {reports.id: "reports", exports.id: "exports"}
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(1)
    records = [
        Record("reports", "2", utc(2027, 3, 1, 10), "0.333"),  # before the period
        Record("reports", "3", utc(2027, 3, 2), "2.51"),  # at its start: in
        *(Record("reports", "1", utc(2027, 3, 3, hour), "0.005") for hour in (1, 2, 3)),
        Record("exports", "7", utc(2027, 3, 4), "0.125"),
        Record("reports", "4", utc(2027, 3, 4, 6)),  # no price: no plan prices it, not billed
        Record("reports", "10", utc(2027, 3, 5), "1"),  # exactly at its end: out
        Record("reports", "1", utc(2027, 3, 6), "9.99"),  # after
    ]
    await record_all(ledger, usage, account, records)
    await ledger.advance(utc(2027, 3, 7, 12))
    first_period = (utc(2027, 3, 2), utc(2027, 3, 5))

    first = await invoices.CreateInvoice(period(*first_period, account))
    want = expected(records, first_period)
    # 3 x 2.51 + 3 x 0.005 = 7.545: 7.55 rounded once, half-up (per record it would be 7.56).
    assert want == {"reports": ("6", 755), "exports": ("7", 88)}
    assert billed(first, codes) == want
    assert first.total.amount_minor == 755 + 88 and first.reason == ipb.Invoice.REASON_PERIOD
    assert at(first.create_time) == utc(2027, 3, 7, 12)  # the account's time: its test clock's
    for line in first.lines:
        assert (at(line.period_start), at(line.period_end)) == first_period
        assert line.subscription_id == "" and line.unit_price.value == ""

    # An overlapping period bills only what the first did not: [Mar 5, Mar 7).
    await ledger.advance(utc(2027, 3, 7, 13))  # made later than the first
    second_period = (utc(2027, 3, 4), utc(2027, 3, 7))
    second = await invoices.CreateInvoice(period(*second_period, account))
    assert billed(second, codes) == expected(records, (utc(2027, 3, 5), utc(2027, 3, 7)))
    assert billed(second, codes) == {"reports": ("11", 1999)}

    # Nothing of either period is left.
    for again in (first_period, second_period, (utc(2027, 3, 2), utc(2027, 3, 7))):
        error = await failing(invoices.CreateInvoice(period(*again, account)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "NOTHING_TO_INVOICE"

    # The first cannot be voided while the second, made later, overlaps it: the second left the
    # overlap's records out, so nothing would bill them again.
    error = await failing(invoices.VoidInvoice(ipb.VoidInvoiceRequest(id=first.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "LATER_PERIOD_INVOICE"
    assert details(error).info.metadata["later_invoice_id"] == second.id
    # Voided, the second's part is billable again, and billed by the next invoice of that period.
    await invoices.VoidInvoice(ipb.VoidInvoiceRequest(id=second.id))
    await ledger.advance(utc(2027, 3, 7, 14))
    again = await invoices.CreateInvoice(period(*second_period, account, finalize=True))
    assert again.status == Status.STATUS_OPEN and billed(again, codes) == billed(second, codes)
    # The records before the first period are still unbilled; a period from the start bills them only.
    rest = await invoices.CreateInvoice(period(utc(2027, 3, 1), utc(2027, 3, 7), account))
    assert (
        billed(rest, codes) == expected(records, (utc(2027, 3, 1), first_period[0])) == {"reports": ("2", 67)}
    )
    # Voiding the later ones first, then the first, gives its records back too.
    for later in (rest, again, first):
        await invoices.VoidInvoice(ipb.VoidInvoiceRequest(id=later.id))
    whole = await invoices.CreateInvoice(period(utc(2027, 3, 1), utc(2027, 3, 7), account))
    assert billed(whole, codes) == expected(records, (utc(2027, 3, 1), utc(2027, 3, 7)))
    # Every priced record was billed once over the invoices that are not void.
    kept = [whole]
    units = sum(Decimal(line.quantity.value) for invoice in kept for line in invoice.lines)
    assert units == sum(Decimal(r.units) for r in records if r.price)


async def test_records_in_a_subscriptions_live_time_are_its_own_and_the_rest_the_period_invoices(
    usage_simulation: Simulation,
) -> None:
    """A flat subscription live from Mar 10 to its cancel (now, with its final invoice) on Apr 15: the
    records of that time are on its invoices, those before and after it on the period invoice; over
    the scenario each record is billed once."""
    channel = usage_simulation.channel
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    usage = UsageServiceStub(channel)
    reports = await new_meter(channel, "reports")
    plan = await flat(channel, "flat-period")
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await ledger.account(2)
    start, cancel_time = utc(2027, 3, 10, 12), utc(2027, 4, 15, 6)
    before = [Record("reports", "3", utc(2027, 3, 2), "1.25"), Record("reports", "1", utc(2027, 3, 9), "0.5")]
    await record_all(ledger, usage, account, before)
    await ledger.advance(start)
    subscription = await ledger.subscribe(account, plan.id)
    during = [
        Record("reports", "2", start, "0.75"),  # at its start: its own
        Record("reports", "5", utc(2027, 3, 20), "1.25"),
        Record("reports", "4", utc(2027, 4, 2), "2"),
    ]
    await record_all(ledger, usage, account, during)
    await ledger.advance(cancel_time)
    await ledger.subs.CancelSubscription(
        spb.CancelSubscriptionRequest(
            id=subscription.id, proration_behavior=spb.PRORATION_BEHAVIOR_NONE, invoice_now=True
        )
    )
    after = [Record("reports", "6", cancel_time, "0.25"), Record("reports", "1", utc(2027, 4, 20), "3")]
    await record_all(ledger, usage, account, after)
    await ledger.advance(utc(2027, 4, 25))

    whole = (utc(2027, 3, 1), utc(2027, 5, 1))
    made = await invoices.CreateInvoice(period(*whole, account, finalize=True))
    records = [*before, *during, *after]
    outside = expected(records, (whole[0], start), (cancel_time, whole[1]))
    assert billed(made, {reports.id: "reports"}) == outside == {"reports": ("11", 875)}

    listed = await invoices.ListInvoices(ipb.ListInvoicesRequest(account_id=account, page_size=100))
    mine = [invoice for invoice in listed.invoices if invoice.subscription_id == subscription.id]
    own = sum(
        line.amount.amount_minor for invoice in mine for line in invoice.lines if line.meter_id == reports.id
    )
    assert own == minor(
        sum((Decimal(r.units) * Decimal(r.price) for r in during), Decimal(0))
    )  # one invoice, one line
    units = [
        Decimal(line.quantity.value)
        for invoice in [*mine, made]
        for line in invoice.lines
        if line.meter_id == reports.id
    ]
    assert sum(units) == sum(Decimal(r.units) for r in records)  # every record once, on one invoice


async def test_a_period_invoice_over_rest(usage_simulation: Simulation) -> None:
    """POST /v1/accounts/{account_id}/invoices with the period bills the records as the RPC does."""
    reports, account = await recorded_account(
        usage_simulation.channel,
        3,
        [Record("reports", "2", utc(2027, 3, 2), "0.125"), Record("reports", "3", utc(2027, 3, 3), "1.10")],
    )
    body = {"periodStart": "2027-03-01T00:00:00Z", "periodEnd": "2027-03-04T00:00:00Z", "finalize": True}
    admin = bearer(mint(usage_simulation.app))
    path = f"/v1/accounts/{account}/invoices"
    async with Gateway(usage_simulation.app) as http:
        data, _ = await call(http, "POST", path, 200, json=body, headers=admin)
        [line] = data["lines"]
        assert line["kind"] == "KIND_USAGE" and line["meterId"] == reports.id
        assert line["quantity"]["value"] == "5"
        assert int(data["total"]["amountMinor"]) == minor(Decimal("0.25") + Decimal("3.30")) == 355
        refused, _ = await call(http, "POST", path, 409, json=body, headers=admin)  # billed once
        assert {d.get("reason") for d in refused["details"]} >= {"NOTHING_TO_INVOICE"}


@pytest.fixture
async def pg_simulation(postgres_settings: Settings, postgres_clean: None) -> AsyncIterator[Simulation]:
    async with simulated(postgres_settings) as running:
        try:
            yield running
        finally:
            await forget_scenario_usage(running.app)


@pytest.mark.postgres
async def test_two_racing_period_invoices_bill_the_usage_once(pg_simulation: Simulation) -> None:
    """Both requests are held at the invoice number's row lock (taken after the usage is read, by the
    finalize) until both are in: without the account's exclusive row lock both would have read the
    usage as unbilled and billed it; with it the second waits for the first to commit and finds
    nothing."""
    channel, app = pg_simulation.channel, pg_simulation.app
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    _, account = await recorded_account(
        channel,
        4,
        [Record("reports", "4", utc(2027, 3, 2), "1.5"), Record("reports", "1", utc(2027, 3, 3), "0.015")],
    )
    # A finalized invoice first, so that the number sequence's row exists to be held.
    setup = ipb.NewInvoiceLine(description="Setup", unit_price=decimal_pb2.Decimal(value="1"))
    await invoices.CreateInvoice(ipb.CreateInvoiceRequest(account_id=account, lines=[setup], finalize=True))

    async def waiting() -> int:
        async with app.engine.connect() as probe:
            found = await probe.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            return int(found or 0)

    async with app.engine.connect() as holder:
        transaction = await holder.begin()
        await holder.execute(text("SELECT 1 FROM invoice_number_sequences WHERE prefix = 'INV' FOR UPDATE"))
        request = period(utc(2027, 3, 1), utc(2027, 3, 4), account, finalize=True)
        racing = [asyncio.ensure_future(invoices.CreateInvoice(request)) for _ in range(2)]

        async def both_waiting() -> bool:
            return await waiting() >= 2

        await eventually(both_waiting, what="both CreateInvoice calls waiting on a lock")
        await transaction.rollback()
    results = await asyncio.gather(*racing, return_exceptions=True)

    made = [found for found in results if isinstance(found, ipb.Invoice)]
    refused = [found for found in results if isinstance(found, grpc.aio.AioRpcError)]
    assert len(made) == 1 and len(refused) == 1, results
    assert reason(refused[0]) == "NOTHING_TO_INVOICE"
    assert made[0].total.amount_minor == minor(Decimal(6) + Decimal("0.015")) == 602

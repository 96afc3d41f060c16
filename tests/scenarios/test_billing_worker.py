"""The billing worker on the wall clock (moved here as a FrozenClock): renewals become numbered,
finalized invoices exactly once, whoever runs the work and however often.

The cycle invoice of a renewal holds every item of the subscription that starts at or before the
renewal: the new period's fee in advance (Stripe's "subscription invoices are created at the start
of each billing period": https://docs.stripe.com/billing/subscriptions/overview#subscription-lifecycle)
and what the subscription has owed since its last cycle invoice (a prorated change). The first
period's fee is invoiced at sign-up, in the CreateSubscription transaction, and finalized at once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.server import billing_worker
from billing_svc.worker import BillingWorker
from core.outbox import read_events
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc
from tally.billing.v1 import test_clock_pb2 as cpb
from tally.billing.v1.usage_pb2_grpc import UsageServiceStub
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan
from tests.scenarios.billing import Ledger, utc
from tests.scenarios.conftest import Simulation
from tests.scenarios.usage_plan import FEE, invoices_of, lines_of, record, usage_plan

pytestmark = pytest.mark.scenario

Status = ipb.Invoice.Status


def _when(stamp: object) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined]


def _worker(simulation: Simulation) -> BillingWorker:
    worker = billing_worker(simulation.app.components)
    assert worker is not None
    return worker


async def test_each_renewal_is_one_numbered_open_invoice(simulation: Simulation) -> None:
    channel = simulation.channel
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 1)
    plan = await new_plan(channel, "team", base_minor=4900)
    sub = await subs.CreateSubscription(
        spb.CreateSubscriptionRequest(subscription=spb.Subscription(account_id=account.id, plan_id=plan.id))
    )
    # The sign-up invoice: March's fee, finalized at once, dated at the sign-up.
    listed = await invoices.ListInvoices(ipb.ListInvoicesRequest(account_id=account.id))
    [signup] = listed.invoices
    assert signup.status == Status.STATUS_OPEN and signup.number == "INV-000001"
    assert [(_when(line.period_start), line.amount.amount_minor) for line in signup.lines] == [
        (datetime(2027, 3, 1, tzinfo=UTC), 4900)
    ]
    assert _when(signup.create_time) == _when(sub.create_time)
    worker = _worker(simulation)
    assert (await worker.run_until_idle()).claimed == 0  # March has just begun: nothing is due

    # 1 April 00:00 is the first renewal; at 06:00 the worker runs it.
    simulation.advance(datetime(2027, 4, 1, 6, tzinfo=UTC) - simulation.now)
    assert await worker.due_count() == 1
    report = await worker.run_until_idle()
    assert (report.claimed, report.work, report.failed) == (1, {"renewal": 1}, 0)
    listed = await invoices.ListInvoices(ipb.ListInvoicesRequest(account_id=account.id))
    first, _ = listed.invoices
    assert first.status == Status.STATUS_OPEN and first.number == "INV-000002"
    assert first.reason == ipb.Invoice.REASON_SUBSCRIPTION_CYCLE and first.subscription_id == sub.id
    # April's fee in advance.
    assert [(_when(line.period_start), line.amount.amount_minor) for line in first.lines] == [
        (datetime(2027, 4, 1, tzinfo=UTC), 4900),
    ]
    assert first.total.amount_minor == first.amount_due.amount_minor == 4900
    assert _when(first.create_time) == datetime(2027, 4, 1, tzinfo=UTC)  # dated at the boundary
    pending = await subs.ListPendingInvoiceItems(spb.ListPendingInvoiceItemsRequest(account_id=account.id))
    assert list(pending.items) == []  # everything owed is on the invoice

    # Running again finds nothing; so does a second worker.
    assert (await worker.run_until_idle()).claimed == 0
    assert (await _worker(simulation).run_until_idle()).claimed == 0

    # Two renewals overdue at once (May and June): one invoice each, each with its own fee.
    simulation.advance(datetime(2027, 6, 2, tzinfo=UTC) - simulation.now)
    report = await worker.run_until_idle()
    assert report.work == {"renewal": 2}
    listed = await invoices.ListInvoices(ipb.ListInvoicesRequest(account_id=account.id))
    assert [invoice.number for invoice in listed.invoices] == [
        "INV-000004",
        "INV-000003",
        "INV-000002",
        "INV-000001",
    ]
    assert [[_when(line.period_start) for line in invoice.lines] for invoice in listed.invoices[:2]] == [
        [datetime(2027, 6, 1, tzinfo=UTC)],
        [datetime(2027, 5, 1, tzinfo=UTC)],
    ]

    # Each invoice was announced as created and finalized, in that order.
    async with simulation.app.components.platform.readers() as session:
        events = await read_events(session, 0, 1000)
    announced = [(e.type, e.resource_id) for e in events if e.type.startswith("invoice.")]
    assert announced == [
        (kind, invoice.id)
        for invoice in reversed(listed.invoices)
        for kind in ("invoice.created", "invoice.finalized")
    ]


async def test_a_test_clock_advance_invoices_the_trial_end_and_each_renewal(simulation: Simulation) -> None:
    channel = simulation.channel
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    ledger = await Ledger.start(channel, utc(2027, 5, 20, 15))
    account = await ledger.account(1)
    plan = await new_plan(channel, "trial-monthly", base_minor=2500, trial_days=14)
    sub = await ledger.subscribe(account, plan.id)
    # The clock's subscriptions are not the wall-clock worker's, even when their time has passed.
    assert await _worker(simulation).due_count() == 0

    # The trial ends on 3 June; renewals on 3 July and 3 August.
    await ledger.advance(utc(2027, 8, 10))
    listed = await invoices.ListInvoices(ipb.ListInvoicesRequest(account_id=account))
    got = [
        (invoice.number, _when(invoice.create_time), [line.amount.amount_minor for line in invoice.lines])
        for invoice in reversed(listed.invoices)
    ]
    assert got == [
        ("INV-000001", utc(2027, 6, 3), [2500]),
        ("INV-000002", utc(2027, 7, 3), [2500]),
        ("INV-000003", utc(2027, 8, 3), [2500]),
    ]
    assert {invoice.subscription_id for invoice in listed.invoices} == {sub.id}
    assert {invoice.status for invoice in listed.invoices} == {Status.STATUS_OPEN}
    # Advancing to the same time again invoices nothing more.
    await ledger.advance(utc(2027, 8, 10))
    again = await invoices.ListInvoices(ipb.ListInvoicesRequest(account_id=account))
    assert len(again.invoices) == 3


async def test_the_worker_finalizes_a_usage_invoice_after_its_grace_period(
    usage_simulation: Simulation,
) -> None:
    """A renewal that bills usage is a draft for the grace period (1 hour by default); usage timed in
    the closed period and received meanwhile is on it; the worker's first pass after the grace
    finalizes it. A test clock's draft is the advance's, never the wall-clock worker's."""
    simulation = usage_simulation
    channel = simulation.channel
    usage = UsageServiceStub(channel)
    _, plan = await usage_plan(channel)
    account = await new_account(channel, 1)
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    await subs.CreateSubscription(
        spb.CreateSubscriptionRequest(subscription=spb.Subscription(account_id=account.id, plan_id=plan.id))
    )
    rehearsal = await Ledger.start(channel, utc(2027, 3, 1, 9))
    on_clock = await rehearsal.account(2)
    await rehearsal.subscribe(on_clock, plan.id)
    await rehearsal.advance(utc(2027, 4, 1))  # the clock's renewal: a draft until 01:00 on its time
    await record(usage, account.id, "150", simulation.now)  # 100 + 50 x 0.50 = 125.00

    worker = _worker(simulation)
    simulation.advance(datetime(2027, 4, 1, 0, 30, tzinfo=UTC) - simulation.now)
    report = await worker.run_until_idle()
    assert (report.work, report.drafts, report.finalized) == ({"renewal": 1}, 0, 0)
    draft = (await invoices_of(channel, account.id))[-1]
    assert draft.status == Status.STATUS_DRAFT
    assert lines_of(draft) == [("SUBSCRIPTION_FEE", "1", FEE), ("USAGE", "150", 12500)]

    await record(usage, account.id, "60", datetime(2027, 3, 31, 23, 59, tzinfo=UTC))  # late, in March
    simulation.advance(datetime(2027, 4, 1, 1, tzinfo=UTC) - simulation.now)
    report = await worker.run_until_idle()
    assert (report.claimed, report.drafts, report.finalized, report.failed) == (0, 1, 1, 0)
    done = (await invoices_of(channel, account.id))[-1]
    assert (done.id, done.status, done.number) == (draft.id, Status.STATUS_OPEN, "INV-000003")
    # 210 units: 100 + 50 + 1.00 = 151.00, over the minimum.
    assert lines_of(done) == [("SUBSCRIPTION_FEE", "1", FEE), ("USAGE", "210", 15100)]
    assert _when(done.finalize_time) == datetime(2027, 4, 1, 1, tzinfo=UTC)
    assert (await worker.run_until_idle()).drafts == 0  # nothing left to claim

    # The test clock's draft is still a draft: its clock has not reached 01:00.
    [_, clock_draft] = await invoices_of(channel, on_clock)
    assert clock_draft.status == Status.STATUS_DRAFT
    await rehearsal.advance(utc(2027, 4, 1, 1))
    [_, finalized] = await invoices_of(channel, on_clock)
    assert (finalized.id, finalized.status) == (clock_draft.id, Status.STATUS_OPEN)


async def test_a_deleted_clock_s_drafts_are_left_to_be_finalized_by_hand(
    usage_simulation: Simulation,
) -> None:
    simulation = usage_simulation
    channel = simulation.channel
    _, plan = await usage_plan(channel)
    rehearsal = await Ledger.start(channel, utc(2027, 3, 1, 9))
    account = await rehearsal.account(1)
    await rehearsal.subscribe(account, plan.id)
    await rehearsal.advance(utc(2027, 4, 1))  # April's renewal: a draft in its grace period
    await rehearsal.clocks.DeleteTestClock(cpb.DeleteTestClockRequest(id=rehearsal.clock.id))

    simulation.advance(datetime(2027, 4, 2, tzinfo=UTC) - simulation.now)  # past the grace, on the wall
    report = await _worker(simulation).run_until_idle()
    assert (report.drafts, report.finalized) == (0, 0)
    _, draft = await invoices_of(channel, account)
    assert draft.status == Status.STATUS_DRAFT

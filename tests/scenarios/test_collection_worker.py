"""The collection worker on the wall clock (a FrozenClock), on PostgreSQL and SQLite: renewal invoices the
billing worker finalized are charged by two collection workers at once (two claim loops, as two
replicas would run), through the payments module, each invoice exactly once per dunning step at the
real sandbox gateway, and the declined ones are retried on the schedule.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from app.server import billing_worker, collection_worker
from billing_svc.collection import CollectionReport, CollectionWorker
from core.settings import Settings
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc, payment_pb2, payment_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan, set_payment_method
from tests.scenarios.conftest import Simulation, charges_executed, paying_to, simulated

pytestmark = pytest.mark.scenario

State = spb.Subscription.State
Status = ipb.Invoice.Status
Paid = payment_pb2.Payment.Status
SUBSCRIPTIONS = 24  # half of them decline


@pytest.fixture
async def wall(settings: Settings, sandbox_url: str) -> AsyncIterator[Simulation]:
    # `simulated` turns usage upkeep off (a 2027 wall clock would make partitions months ahead).
    async with simulated(paying_to(settings, sandbox_url)) as simulation:
        yield simulation


async def _charges(simulation: Simulation, invoice_id: str) -> list[int]:
    """The statuses of the invoice's payments, in no order (their create_time is the frozen wall clock's)."""
    stub = payment_pb2_grpc.PaymentServiceStub(simulation.channel)
    listed = await stub.ListPayments(payment_pb2.ListPaymentsRequest(invoice_id=invoice_id, page_size=100))
    return sorted(payment.status for payment in listed.payments)


def _collection_worker(simulation: Simulation, batch: int) -> CollectionWorker:
    worker = collection_worker(simulation.app.components, simulation.app.metrics)
    assert worker is not None
    worker._batch = batch  # small batches, so that the two workers' claims interleave
    return worker


async def _both(simulation: Simulation) -> CollectionReport:
    first, second = _collection_worker(simulation, 3), _collection_worker(simulation, 3)
    reports = await asyncio.gather(first.run_until_idle(), second.run_until_idle())
    total = CollectionReport()
    for report in reports:
        total.merge(report)
    return total


async def test_two_workers_charge_each_invoice_once_and_retry_the_declined(
    wall: Simulation, sandbox_url: str
) -> None:
    channel = wall.channel
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    plan = await new_plan(channel, "walled", base_minor=1500)
    accounts: list[str] = []
    for n in range(SUBSCRIPTIONS):
        account = await new_account(channel, n)
        await set_payment_method(channel, account.id, "tok_success")
        await subs.CreateSubscription(
            spb.CreateSubscriptionRequest(
                subscription=spb.Subscription(account_id=account.id, plan_id=plan.id)
            )
        )
        accounts.append(account.id)
    worker = _collection_worker(wall, 3)
    # The sign-up invoices, finalized with their subscriptions, are collected first, by a good card.
    assert await worker.due_count() == SUBSCRIPTIONS
    signed_up = await _both(wall)
    assert (signed_up.claimed, signed_up.outcomes) == (SUBSCRIPTIONS, {"paid": SUBSCRIPTIONS})
    for n, account_id in enumerate(accounts):  # then half the accounts' cards decline
        await set_payment_method(channel, account_id, "tok_success" if n % 2 == 0 else "tok_decline")
    before = await charges_executed(sandbox_url)
    assert await worker.due_count() == 0  # nothing more is finalized yet

    # 1 April: the renewals are invoiced by the billing worker, then collected by two workers.
    wall.advance(datetime(2027, 4, 1, 6, tzinfo=UTC) - wall.now)
    billing = billing_worker(wall.app.components)
    assert billing is not None
    await billing.run_until_idle()
    assert await worker.due_count() == SUBSCRIPTIONS
    report = await _both(wall)
    assert (report.claimed, report.outcomes, report.lost) == (
        SUBSCRIPTIONS,
        {"paid": SUBSCRIPTIONS // 2, "declined": SUBSCRIPTIONS // 2},
        0,
    )
    assert await charges_executed(sandbox_url) - before == SUBSCRIPTIONS
    listed = {
        # The renewal's invoice: the newest (the sign-up invoice is the other).
        account: (await invoices.ListInvoices(ipb.ListInvoicesRequest(account_id=account))).invoices[0]
        for account in accounts
    }
    for n, account_id in enumerate(accounts):
        invoice = listed[account_id]
        assert await _charges(wall, invoice.id) == [
            Paid.STATUS_SUCCEEDED if n % 2 == 0 else Paid.STATUS_FAILED
        ]
        assert invoice.status == (Status.STATUS_PAID if n % 2 == 0 else Status.STATUS_OPEN)
    states = await subs.ListSubscriptions(spb.ListSubscriptionsRequest(page_size=100))
    assert sorted(State.Name(s.state) for s in states.subscriptions) == sorted(
        ["STATE_ACTIVE"] * (SUBSCRIPTIONS // 2) + ["STATE_PAST_DUE"] * (SUBSCRIPTIONS // 2)
    )
    assert await worker.due_count() == 0  # the retries are 3 days off
    registry = wall.app.metrics.registry
    assert registry.get_sample_value("tally_collections_total", {"outcome": "paid"}) == (
        SUBSCRIPTIONS + SUBSCRIPTIONS // 2
    )

    # 3 days later the declined ones are retried, once each; the paid ones are not touched.
    wall.advance(timedelta(days=3))
    report = await _both(wall)
    assert (report.claimed, report.outcomes) == (SUBSCRIPTIONS // 2, {"declined": SUBSCRIPTIONS // 2})
    assert await charges_executed(sandbox_url) - before == SUBSCRIPTIONS + SUBSCRIPTIONS // 2
    for n, account_id in enumerate(accounts):
        invoice = listed[account_id]
        expected = [Paid.STATUS_SUCCEEDED] if n % 2 == 0 else [Paid.STATUS_FAILED] * 2
        assert await _charges(wall, invoice.id) == expected
    assert (await _both(wall)).claimed == 0

"""Automatic collection and dunning on a test clock, through the payments module to the real sandbox
gateway (a process of its own), on SQLite and PostgreSQL.

A monthly plan subscribed on 1 May (its sign-up invoice paid by a good card) renews on 1 June, by
when the account's card is the one under test: the renewal's invoice is finalized and charged
at once with the account's default payment method (a sandbox token that decides the outcome); a
decline makes the subscription past due, and the retries follow on the default schedule (3, 5 and 7
days after finalization: 4, 6 and 8 June), each at its time inside one advance. After the last one
fails the subscription ends as TALLY_DUNNING_END_STATE says. Charges are counted at the sandbox
(/admin/stats; the sandbox serves one test module, and the tests run one after another).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from core.outbox import read_events
from core.settings import Settings
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc, payment_pb2, payment_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_plan, set_payment_method
from tests.integration.sandbox_support import CLIENT_TIMEOUT, TIMEOUT_DELAY, sandbox_process
from tests.integration.test_invoices import line, one_off
from tests.scenarios.billing import Ledger, at, utc
from tests.scenarios.conftest import Simulation, charges_executed, paying_to, simulated

pytestmark = pytest.mark.scenario

State = spb.Subscription.State
Status = ipb.Invoice.Status
PaymentStatus = payment_pb2.Payment.Status


SIGN_UP = utc(2027, 5, 1)


async def _start(simulation: Simulation, token: str | None) -> tuple[Ledger, str, str]:
    """A subscription made on 1 May. With a `token`, its sign-up invoice is paid by a good card
    (charged at the first step of an advance) and `token` is then the account's payment method, for
    the renewals; with none, the account has no payment method at all."""
    ledger = await Ledger.start(simulation.channel, SIGN_UP)
    account = await ledger.account(1)
    if token is not None:
        await set_payment_method(simulation.channel, account, "tok_success")
    plan = await new_plan(simulation.channel, "dunned", base_minor=4900)
    sub = await ledger.subscribe(account, plan.id)
    if token is not None:
        await ledger.advance(SIGN_UP + timedelta(minutes=1))
        [signed_up] = await _invoices(simulation, account, with_sign_up=True)
        assert signed_up.status == Status.STATUS_PAID
        await set_payment_method(simulation.channel, account, token)
    return ledger, account, sub.id


async def _declined(simulation: Simulation, sandbox_url: str) -> tuple[Ledger, str, str, ipb.Invoice, int]:
    """A declining card's June renewal, charged once by 2 June: the subscription past due. Returns
    (ledger, account, subscription, June's invoice, the sandbox's charges before it)."""
    ledger, account, sub = await _start(simulation, "tok_decline")
    before = await charges_executed(sandbox_url)
    await ledger.advance(utc(2027, 6, 2))
    [invoice] = await _invoices(simulation, account)
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE
    return ledger, account, sub, invoice, before


async def _invoices(simulation: Simulation, account: str, *, with_sign_up: bool = False) -> list[ipb.Invoice]:
    """The account's invoices, newest first; without the sign-up invoice (May's) unless asked."""
    stub = invoice_pb2_grpc.InvoiceServiceStub(simulation.channel)
    listed = (await stub.ListInvoices(ipb.ListInvoicesRequest(account_id=account))).invoices
    return [i for i in listed if with_sign_up or at(i.period_start) != SIGN_UP]


async def _payments(simulation: Simulation, invoice_id: str) -> list[int]:
    stub = payment_pb2_grpc.PaymentServiceStub(simulation.channel)
    listed = await stub.ListPayments(payment_pb2.ListPaymentsRequest(invoice_id=invoice_id, page_size=100))
    # Their create_time is the (frozen) wall clock's: the statuses, in no order.
    return sorted(payment.status for payment in listed.payments)


async def _events(simulation: Simulation, resource_id: str) -> list[str]:
    async with simulation.app.components.platform.readers() as session:
        events = await read_events(session, 0, 10_000)
    return [event.type for event in events if event.resource_id == resource_id]


async def test_declines_run_the_schedule_and_cancel(dunning: Simulation, sandbox_url: str) -> None:
    ledger, account, sub = await _start(dunning, "tok_decline")
    before = await charges_executed(sandbox_url)

    # The renewal's invoice is charged at once: declined, past due, retried from 4 June.
    await ledger.advance(utc(2027, 6, 2))
    [invoice] = await _invoices(dunning, account)
    assert invoice.status == Status.STATUS_OPEN and invoice.amount_due.amount_minor == 4900
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE
    assert await charges_executed(sandbox_url) - before == 1

    # One advance over the rest of the schedule runs the three retries, in order, then cancels.
    await ledger.advance(utc(2027, 6, 11))
    assert await charges_executed(sandbox_url) - before == 4
    assert await _payments(dunning, invoice.id) == [PaymentStatus.STATUS_FAILED] * 4
    canceled = await ledger.get(sub)
    assert canceled.state == State.STATE_CANCELED
    assert at(canceled.cancel_time) == utc(2027, 6, 8)  # the last retry's time
    [still] = await _invoices(dunning, account)
    assert still.status == Status.STATUS_OPEN  # left open: it is still owed
    events = await _events(dunning, invoice.id)
    assert events.count("invoice.dunning_step") == events.count("invoice.payment_failed") == 4
    assert [
        e for e in await _events(dunning, sub) if e in ("subscription.past_due", "subscription.canceled")
    ] == [
        "subscription.past_due",
        "subscription.canceled",
    ]
    # Nothing more is tried: a later advance charges nothing.
    await ledger.advance(utc(2027, 7, 15))
    assert await charges_executed(sandbox_url) - before == 4


async def test_the_unpaid_end_state_and_a_payment_by_hand_restores_it(
    dunning_unpaid: Simulation, sandbox_url: str
) -> None:
    simulation = dunning_unpaid
    subs = subscription_pb2_grpc.SubscriptionServiceStub(simulation.channel)
    ledger, account, sub = await _start(simulation, "tok_insufficient_funds")
    before = await charges_executed(sandbox_url)
    await ledger.advance(utc(2027, 6, 11))
    [invoice] = await _invoices(simulation, account)
    assert await charges_executed(sandbox_url) - before == 4
    assert (await ledger.get(sub)).state == State.STATE_UNPAID
    entitled = await subs.GetEntitlements(spb.GetEntitlementsRequest(account_id=account))
    assert list(entitled.entitlements) == []  # no features while unpaid

    # Unpaid periods roll over without fees: July's renewal makes no invoice.
    await ledger.advance(utc(2027, 7, 2))
    assert (await ledger.get(sub)).state == State.STATE_UNPAID
    assert len(await _invoices(simulation, account)) == 1

    # Paid by hand: the next advance finds it paid and makes the subscription active again,
    # without charging anything.
    stub = invoice_pb2_grpc.InvoiceServiceStub(simulation.channel)
    paid = await stub.PayInvoice(ipb.PayInvoiceRequest(id=invoice.id, paid_out_of_band=True))
    assert paid.status == Status.STATUS_PAID
    await ledger.advance(utc(2027, 7, 3))
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    assert await charges_executed(sandbox_url) - before == 4
    assert "subscription.payment_recovered" in await _events(simulation, sub)


async def test_an_updated_card_pays_the_next_retry(dunning: Simulation, sandbox_url: str) -> None:
    ledger, account, sub = await _start(dunning, "tok_decline")
    before = await charges_executed(sandbox_url)
    await ledger.advance(utc(2027, 6, 5))  # the first charge and the first retry (4 June) declined
    [invoice] = await _invoices(dunning, account)
    assert await charges_executed(sandbox_url) - before == 2
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE

    await set_payment_method(dunning.channel, account, "tok_success")  # the customer updates the card
    await ledger.advance(utc(2027, 6, 11))  # the retry of 6 June pays; none follows
    assert await charges_executed(sandbox_url) - before == 3
    assert await _payments(dunning, invoice.id) == sorted(
        [PaymentStatus.STATUS_FAILED] * 2 + [PaymentStatus.STATUS_SUCCEEDED]
    )
    [paid] = await _invoices(dunning, account)
    assert paid.status == Status.STATUS_PAID and paid.amount_paid.amount_minor == 4900  # paid once
    assert at(paid.paid_time) == utc(2027, 6, 6)
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    assert "subscription.payment_recovered" in await _events(dunning, sub)

    # July's renewal is charged at once and paid.
    await ledger.advance(utc(2027, 7, 2))
    july = (await _invoices(dunning, account))[0]
    assert july.id != invoice.id and july.status == Status.STATUS_PAID
    assert await _payments(dunning, july.id) == [PaymentStatus.STATUS_SUCCEEDED]
    assert await charges_executed(sandbox_url) - before == 4


async def test_without_a_payment_method_the_invoice_waits(dunning: Simulation, sandbox_url: str) -> None:
    ledger, account, sub = await _start(dunning, None)
    before = await charges_executed(sandbox_url)
    await ledger.advance(utc(2027, 6, 11))
    [invoice] = await _invoices(dunning, account)
    assert invoice.status == Status.STATUS_OPEN
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    assert await _payments(dunning, invoice.id) == []
    assert await charges_executed(sandbox_url) == before


async def test_a_payment_made_by_hand_restores_a_past_due_subscription(
    dunning: Simulation, sandbox_url: str
) -> None:
    ledger, account, sub, invoice, before = await _declined(dunning, sandbox_url)

    # CreatePayment with another card, between two retries: the invoice is paid, and the advance
    # that follows restores the subscription without charging again.
    payments = payment_pb2_grpc.PaymentServiceStub(dunning.channel)
    made = await payments.CreatePayment(
        payment_pb2.CreatePaymentRequest(
            invoice_id=invoice.id, payment_method="tok_success", request_id="by-hand"
        )
    )
    assert made.status == PaymentStatus.STATUS_SUCCEEDED
    assert await charges_executed(sandbox_url) - before == 2
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE  # until the next collection step
    await ledger.advance(utc(2027, 6, 3))
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    await ledger.advance(utc(2027, 6, 11))  # no retry follows
    assert await charges_executed(sandbox_url) - before == 2
    [paid] = await _invoices(dunning, account)
    assert paid.status == Status.STATUS_PAID


async def test_a_gateway_failure_is_retried_after_the_delay_and_is_no_dunning_step(
    dunning: Simulation, sandbox_url: str
) -> None:
    ledger, account, sub = await _start(dunning, "tok_error")  # the sandbox answers 500, charging nothing
    await ledger.advance(utc(2027, 6, 1, 2, 30))  # collected at 00:00, 01:00 and 02:00
    [invoice] = await _invoices(dunning, account)
    assert await _payments(dunning, invoice.id) == [PaymentStatus.STATUS_FAILED] * 3
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE  # not past due: the card was never tried
    assert "invoice.dunning_step" not in await _events(dunning, invoice.id)

    # The failures opened the payments module's circuit breaker, which cools down on the wall clock.
    dunning.advance(timedelta(minutes=1))
    await set_payment_method(dunning.channel, account, "tok_success")
    await ledger.advance(utc(2027, 6, 1, 3, 30))
    [paid] = await _invoices(dunning, account)
    assert paid.status == Status.STATUS_PAID and at(paid.paid_time) == utc(2027, 6, 1, 3)


async def test_voided_and_manual_invoices_are_not_charged(dunning: Simulation, sandbox_url: str) -> None:
    ledger, account, _sub, invoice, before = await _declined(dunning, sandbox_url)
    stub = invoice_pb2_grpc.InvoiceServiceStub(dunning.channel)
    await stub.VoidInvoice(ipb.VoidInvoiceRequest(id=invoice.id))  # voiding ends its schedule
    # A manual invoice waits for PayInvoice or CreatePayment, even with a payment method set.
    manual = await stub.CreateInvoice(one_off(account, line("Setup", "20.00"), finalize=True))
    assert manual.status == Status.STATUS_OPEN
    await ledger.advance(utc(2027, 6, 11))
    assert await charges_executed(sandbox_url) - before == 1  # the renewal's first charge only
    assert await _payments(dunning, manual.id) == []


@pytest.fixture(scope="module")
def slow_sandbox_url() -> Iterator[str]:
    """A sandbox whose `tok_timeout` charges answer after TIMEOUT_DELAY, far beyond the client's
    CLIENT_TIMEOUT: the charge is made, the answer lost."""
    with sandbox_process("--timeout-delay", str(TIMEOUT_DELAY)) as url:
        yield url


async def test_a_renewal_charge_that_times_out_is_retried_and_charged_once(
    settings: Settings, slow_sandbox_url: str
) -> None:
    paying = paying_to(settings, slow_sandbox_url).model_copy(
        update={"payment_gateway_timeout_seconds": CLIENT_TIMEOUT}
    )
    async with simulated(paying) as simulation:
        ledger, account, sub = await _start(simulation, "tok_timeout")
        before = await charges_executed(slow_sandbox_url)
        await ledger.advance(utc(2027, 6, 2))
        # The renewal's charge timed out (the gateway charged, its answer came too late); the retry
        # under the same idempotency key got the charge made, so the card was charged once.
        [invoice] = await _invoices(simulation, account)
        assert invoice.status == Status.STATUS_PAID and invoice.amount_paid.amount_minor == 4900
        assert await charges_executed(slow_sandbox_url) - before == 1
        assert await _payments(simulation, invoice.id) == [PaymentStatus.STATUS_SUCCEEDED]
        assert (await ledger.get(sub)).state == State.STATE_ACTIVE
        events = await _events(simulation, invoice.id)
        assert events.count("invoice.paid") == 1 and "invoice.payment_failed" not in events

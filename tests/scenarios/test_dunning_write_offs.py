"""Writing off the invoice that put a subscription in dunning, on a test clock, through the real
sandbox gateway, on SQLite and PostgreSQL (the set-up of test_dunning.py: signed up on 1 May, the
June renewal charged at once with the card under test).

VoidInvoice and MarkInvoiceUncollectible end the invoice's collection (no retry is made for it, as
counted at the sandbox) and, in the same transaction, make its past-due or unpaid subscription
active again, as a payment does, unless another open invoice of the subscription had a charge
declined: that one keeps it past due. Stripe's subscription is past due while payment on its
latest invoice has failed, and becomes active when that reason is gone
(https://docs.stripe.com/billing/subscriptions/overview, "Subscription statuses"); Stripe's pause
on payment failure resumes alike when the invoice is paid or marked uncollectible
(https://docs.stripe.com/changelog/endive/2026-09-30/pause-on-payment-failure).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import select, update

from billing_svc.invoices.tables import InvoiceRow
from core.settings import Settings
from tally.audit.v1 import audit_pb2, audit_pb2_grpc
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc, payment_pb2
from tally.subscription.v1 import subscription_pb2 as spb
from tests.integration.test_gateway import Gateway, bearer, call
from tests.scenarios.billing import Ledger, utc
from tests.scenarios.conftest import Simulation, charges_executed, paying_to, simulated
from tests.scenarios.test_dunning import _declined, _events, _invoices, _payments, _start
from tests.support import failing, mint, reason

pytestmark = pytest.mark.scenario

State = spb.Subscription.State
Status = ipb.Invoice.Status
FAILED = payment_pb2.Payment.Status.STATUS_FAILED
RECOVERED = "subscription.payment_recovered"


@pytest.fixture
async def long_dunning(settings: Settings, sandbox_url: str) -> AsyncIterator[Simulation]:
    """Retries 10, 20 and 40 days after finalization: June's invoice (1 June: retried 11 and 21 June,
    11 July) is still in dunning when July's renewal is declined (1 July: retried 11 July ...)."""
    long = paying_to(settings, sandbox_url).model_copy(update={"dunning_retry_days": "10,20,40"})
    async with simulated(long) as simulation:
        yield simulation


def _stub(simulation: Simulation) -> invoice_pb2_grpc.InvoiceServiceStub:
    return invoice_pb2_grpc.InvoiceServiceStub(simulation.channel)


async def _audited(simulation: Simulation, sub: str) -> list[tuple[str, dict[str, object]]]:
    audit = audit_pb2_grpc.AuditServiceStub(simulation.channel)
    listed = await audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(resource_id=sub, page_size=100))
    return [(e.action, json_format.MessageToDict(e.changes)) for e in listed.audit_events]


async def _hold_claim(simulation: Simulation, invoice_id: str) -> None:
    """As a collection worker does while it charges the invoice: its claim and lease on the row."""
    async with simulation.app.engine.begin() as connection:
        await connection.execute(
            update(InvoiceRow)
            .where(InvoiceRow.id == invoice_id)
            .values(collection_claimed_by="collection-elsewhere", collection_lease_until=utc(2030, 1, 1))
        )


async def _collection_columns(simulation: Simulation, invoice_id: str) -> tuple[object, ...]:
    async with simulation.app.engine.connect() as connection:
        row = (
            await connection.execute(
                select(
                    InvoiceRow.next_collection_time,
                    InvoiceRow.collection_claimed_by,
                    InvoiceRow.collection_lease_until,
                ).where(InvoiceRow.id == invoice_id)
            )
        ).one()
    return tuple(row)


async def test_voiding_the_overdue_invoice_ends_its_dunning_and_restores_the_subscription(
    dunning: Simulation, sandbox_url: str
) -> None:
    ledger, account, sub, invoice, before = await _declined(dunning, sandbox_url)
    assert await _collection_columns(dunning, invoice.id) == (utc(2027, 6, 4), None, None)
    await _hold_claim(dunning, invoice.id)

    request = ipb.VoidInvoiceRequest(id=invoice.id, request_id="void-june")
    voided = await _stub(dunning).VoidInvoice(request)
    assert voided.status == Status.STATUS_VOID
    assert await _stub(dunning).VoidInvoice(request) == voided  # a retry is replayed
    refused = await failing(_stub(dunning).VoidInvoice(ipb.VoidInvoiceRequest(id=invoice.id)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(refused) == "INVALID_STATE"
    # Active at once, in the void's transaction: audited and emitted once, for the retries too.
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    assert (await _events(dunning, sub)).count(RECOVERED) == 1
    recovered = [changes for action, changes in await _audited(dunning, sub) if action == "payment_recovered"]
    assert recovered == [{"state": {"before": "past_due", "after": "active"}}]
    # No schedule and no claim left on it.
    assert await _collection_columns(dunning, invoice.id) == (None, None, None)

    # The retries of 4, 6 and 8 June are not made.
    await ledger.advance(utc(2027, 6, 11))
    assert await charges_executed(sandbox_url) - before == 1
    assert await _payments(dunning, invoice.id) == [FAILED]
    assert (await _events(dunning, invoice.id)).count("invoice.dunning_step") == 1
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE

    # July's renewal is billed and dunned afresh: declined, past due again.
    await ledger.advance(utc(2027, 7, 2))
    july = (await _invoices(dunning, account))[0]
    assert july.id != invoice.id and july.status == Status.STATUS_OPEN
    assert await charges_executed(sandbox_url) - before == 2
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE


async def test_a_paid_invoice_cannot_be_voided_and_a_canceled_subscription_stays_canceled(
    dunning: Simulation, sandbox_url: str
) -> None:
    ledger, account, sub = await _start(dunning, "tok_decline")
    [signed_up] = [
        i for i in await _invoices(dunning, account, with_sign_up=True) if i.status == Status.STATUS_PAID
    ]
    refused = await failing(_stub(dunning).VoidInvoice(ipb.VoidInvoiceRequest(id=signed_up.id)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(refused) == "INVALID_STATE"

    await ledger.advance(utc(2027, 6, 11))  # the four charges declined: canceled on 8 June
    [invoice] = await _invoices(dunning, account)
    assert (await ledger.get(sub)).state == State.STATE_CANCELED
    voided = await _stub(dunning).VoidInvoice(ipb.VoidInvoiceRequest(id=invoice.id))
    assert voided.status == Status.STATUS_VOID
    assert (await ledger.get(sub)).state == State.STATE_CANCELED
    assert RECOVERED not in await _events(dunning, sub)


async def test_marking_the_invoice_uncollectible_over_rest_restores_an_unpaid_subscription(
    dunning_unpaid: Simulation, sandbox_url: str
) -> None:
    simulation = dunning_unpaid
    ledger, account, sub = await _start(simulation, "tok_insufficient_funds")
    before = await charges_executed(sandbox_url)
    await ledger.advance(utc(2027, 6, 11))
    [invoice] = await _invoices(simulation, account)
    assert (await ledger.get(sub)).state == State.STATE_UNPAID
    assert await charges_executed(sandbox_url) - before == 4

    path = f"/v1/invoices/{invoice.id}:markUncollectible"
    async with Gateway(simulation.app) as http:
        admin = bearer(mint(simulation.app))
        keyed = {**admin, "Idempotency-Key": "write-off-june"}
        written_off, _ = await call(http, "POST", path, 200, json={}, headers=keyed)
        assert written_off["status"] == "STATUS_UNCOLLECTIBLE"
        replayed, _ = await call(http, "POST", path, 200, json={}, headers=keyed)
        assert replayed == written_off
        refused, _ = await call(http, "POST", path, 409, json={}, headers=admin)
        assert refused["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        got, _ = await call(http, "GET", f"/v1/subscriptions/{sub}", 200, headers=admin)
    assert got["state"] == "STATE_ACTIVE"
    assert (await _events(simulation, sub)).count(RECOVERED) == 1

    # Active, July's renewal bills its fee and charges it at once (declined: past due again); June's
    # invoice is charged no more.
    await ledger.advance(utc(2027, 7, 2))
    july, june = await _invoices(simulation, account)
    assert june.id == invoice.id and june.status == Status.STATUS_UNCOLLECTIBLE
    assert july.amount_due.amount_minor == 4900
    assert await charges_executed(sandbox_url) - before == 5
    assert await _payments(simulation, june.id) == [FAILED] * 4
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE


async def _two_overdue(
    simulation: Simulation, sandbox_url: str
) -> tuple[Ledger, str, ipb.Invoice, ipb.Invoice, int]:
    """June's invoice declined three times and July's once, by 2 July: (ledger, subscription, July's,
    June's, the sandbox's charges before June)."""
    ledger, account, sub = await _start(simulation, "tok_decline")
    before = await charges_executed(sandbox_url)
    await ledger.advance(utc(2027, 7, 2))
    july, june = await _invoices(simulation, account)
    assert july.status == june.status == Status.STATUS_OPEN
    assert await charges_executed(sandbox_url) - before == 4
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE
    return ledger, sub, july, june, before


async def test_with_two_overdue_invoices_voiding_one_keeps_the_subscription_past_due(
    long_dunning: Simulation, sandbox_url: str
) -> None:
    simulation = long_dunning
    ledger, sub, july, june, before = await _two_overdue(simulation, sandbox_url)
    await _stub(simulation).VoidInvoice(ipb.VoidInvoiceRequest(id=june.id))
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE  # July's is still declined
    assert RECOVERED not in await _events(simulation, sub)

    # 11 July: July's first retry is made, June's last one is not.
    await ledger.advance(utc(2027, 7, 15))
    assert await charges_executed(sandbox_url) - before == 5
    assert await _payments(simulation, june.id) == [FAILED] * 3
    assert await _payments(simulation, july.id) == [FAILED] * 2

    # July's paid by hand: the next step restores the subscription, nothing else being overdue.
    paid = await _stub(simulation).PayInvoice(ipb.PayInvoiceRequest(id=july.id, paid_out_of_band=True))
    assert paid.status == Status.STATUS_PAID
    await ledger.advance(utc(2027, 7, 16))
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    assert (await _events(simulation, sub)).count(RECOVERED) == 1
    assert await charges_executed(sandbox_url) - before == 5


async def test_with_two_overdue_invoices_paying_one_keeps_it_past_due_until_the_other_is_written_off(
    long_dunning: Simulation, sandbox_url: str
) -> None:
    simulation = long_dunning
    ledger, sub, july, june, before = await _two_overdue(simulation, sandbox_url)
    paid = await _stub(simulation).PayInvoice(ipb.PayInvoiceRequest(id=june.id, paid_out_of_band=True))
    assert paid.status == Status.STATUS_PAID
    await ledger.advance(utc(2027, 7, 3))  # the paid invoice's step: July's still declined
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE
    assert RECOVERED not in await _events(simulation, sub)

    written_off = await _stub(simulation).MarkInvoiceUncollectible(
        ipb.MarkInvoiceUncollectibleRequest(id=july.id, request_id="write-off-july")
    )
    assert written_off.status == Status.STATUS_UNCOLLECTIBLE
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    # Voiding the uncollectible invoice later changes the subscription no more.
    await _stub(simulation).VoidInvoice(ipb.VoidInvoiceRequest(id=july.id))
    await ledger.advance(utc(2027, 7, 31))  # no retry of either: 11 and 21 July pass
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    assert (await _events(simulation, sub)).count(RECOVERED) == 1
    assert await charges_executed(sandbox_url) - before == 4

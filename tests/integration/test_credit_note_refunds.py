"""Credit notes with refund method PAYMENT_REFUND, on each backend, through the real server and a
real sandbox gateway process (test_payments' fixtures): the post-payment part refunded on the
invoice's payments through the payments' refund path, counted per refund key at the sandbox's
/admin/stats; split over two payments, newest first; a replay refunds once; a lost answer settled
by the reconciler; refusals that write nothing; the REST route.

Stripe's `refund_amount` on a credit note is the model: https://docs.stripe.com/api/credit_notes/create
("a refund will be created for the charge associated with the invoice").
"""

from __future__ import annotations

import grpc
from sqlalchemy import func, select

from app.server import App
from billing_svc.payments.reconciler import PaymentReconciler
from billing_svc.payments.tables import PaymentRefundRow
from core.principal import Role
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc, payment_pb2_grpc
from tally.billing.v1 import payment_pb2 as pb
from tests.billing_support import new_account, usd
from tests.integration import test_payments
from tests.integration.test_credit_notes import credit
from tests.integration.test_gateway import Gateway, bearer, call, detail
from tests.integration.test_invoices import line, one_off
from tests.integration.test_payments import _events, _Later, _open_invoice, payments_of, refunds_made
from tests.support import channel_as, details, failing, mint, reason

# The sandbox process and the server wired to it, as the payment tests run them.
sandbox_url = test_payments.sandbox_url
app = test_payments.app
channel = test_payments.channel

PAYMENT_REFUND = ipb.CreditNote.REFUND_METHOD_PAYMENT_REFUND
Refund = pb.PaymentRefund.Status


async def _paid(channel: grpc.aio.Channel, n: int, *amounts: int, method: str = "tok_success") -> ipb.Invoice:
    """A USD 100.00 invoice paid through the sandbox by one payment per amount, in that order."""
    invoice = await _open_invoice(channel, n)
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    for minor in amounts:
        paid = await payments.CreatePayment(
            pb.CreatePaymentRequest(invoice_id=invoice.id, amount=usd(minor), payment_method=method)
        )
        assert paid.status == pb.Payment.STATUS_SUCCEEDED
    return invoice


async def _payments(channel: grpc.aio.Channel, invoice_id: str) -> list[pb.Payment]:
    """The invoice's payments, oldest first."""
    listed = await payment_pb2_grpc.PaymentServiceStub(channel).ListPayments(
        pb.ListPaymentsRequest(invoice_id=invoice_id)
    )
    return list(reversed(listed.payments))


async def _refund_rows(app: App) -> int:
    async with app.engine.connect() as connection:
        return int((await connection.scalar(select(func.count()).select_from(PaymentRefundRow))) or 0)


async def test_a_paid_invoice_credited_in_full_is_refunded_once_at_its_gateway(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _paid(channel, 1, 10000)
    note = await invoices.CreateCreditNote(credit(invoice.id, 10000, refund_method=PAYMENT_REFUND))
    assert (note.pre_payment_amount.amount_minor, note.post_payment_amount.amount_minor) == (0, 10000)
    assert note.refund_method == PAYMENT_REFUND and len(note.refund_ids) == 1

    [payment] = await _payments(channel, invoice.id)
    assert payment.amount_refunded == usd(10000)
    assert [(r.id, r.amount.amount_minor, r.status, r.credit_note_id) for r in payment.refunds] == [
        (note.refund_ids[0], 10000, Refund.STATUS_SUCCEEDED, note.id)
    ]
    assert payment.refunds[0].reason == f"credit note {note.number} (order_change)"
    assert await refunds_made(sandbox_url, payment) == [1]

    after = await invoices.GetInvoice(ipb.GetInvoiceRequest(id=invoice.id))
    assert after.status == ipb.Invoice.STATUS_PAID
    assert after.post_payment_credit_notes_amount.amount_minor == 10000
    assert await _events(app, "credit_note", note.id) == ["credit_note.created"]
    assert (await _events(app, "payment", payment.id))[-1:] == ["payment.refunded"]
    assert (await _events(app, "invoice", invoice.id))[-1:] == ["invoice.credited"]
    assert await invoices.GetCreditNote(ipb.GetCreditNoteRequest(id=note.id)) == note

    # Nothing is left to refund: a RefundPayment of the payment is refused by the same holding.
    error = await failing(
        payment_pb2_grpc.PaymentServiceStub(channel).RefundPayment(pb.RefundPaymentRequest(id=payment.id))
    )
    assert reason(error) == "REFUND_EXCEEDS_PAYMENT"


async def test_a_partial_credit_refunds_its_part_and_a_retried_request_refunds_once(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _paid(channel, 2, 10000)
    request = credit(invoice.id, 2000, 1000, refund_method=PAYMENT_REFUND, request_id="cn-refund-once")
    note = await invoices.CreateCreditNote(request)
    assert note.post_payment_amount.amount_minor == 3000 and len(note.refund_ids) == 1
    again = await invoices.CreateCreditNote(request)
    assert again == note

    [payment] = await _payments(channel, invoice.id)
    assert payment.amount_refunded == usd(3000)
    assert [r.amount.amount_minor for r in payment.refunds] == [3000]
    assert await refunds_made(sandbox_url, payment) == [1]
    assert (await _events(app, "payment", payment.id)).count("payment.refunded") == 1
    assert len(await _events(app, "credit_note", note.id)) == 1
    # The rest is still refundable, by the payment service too.
    rest = await payment_pb2_grpc.PaymentServiceStub(channel).RefundPayment(
        pb.RefundPaymentRequest(id=payment.id)
    )
    assert rest.amount_refunded == usd(10000)


async def test_a_credit_beyond_one_payment_is_split_newest_payment_first(
    channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _paid(channel, 3, 4000, 6000)
    note = await invoices.CreateCreditNote(credit(invoice.id, 8000, refund_method=PAYMENT_REFUND))
    older, newer = await _payments(channel, invoice.id)
    assert (older.amount, newer.amount) == (usd(4000), usd(6000))
    # The newest gives back all it can (6000), the older one the rest (2000).
    assert list(note.refund_ids) == [newer.refunds[0].id, older.refunds[0].id]
    assert (newer.amount_refunded, older.amount_refunded) == (usd(6000), usd(2000))
    assert {r.credit_note_id for r in (*newer.refunds, *older.refunds)} == {note.id}
    assert await refunds_made(sandbox_url, newer) == [1] and await refunds_made(sandbox_url, older) == [1]


async def test_within_the_amount_remaining_nothing_is_refunded(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    unpaid = await _open_invoice(channel, 4)
    rows = await _refund_rows(app)
    note = await invoices.CreateCreditNote(credit(unpaid.id, 4000, refund_method=PAYMENT_REFUND))
    assert (note.pre_payment_amount.amount_minor, note.post_payment_amount.amount_minor) == (4000, 0)
    assert list(note.refund_ids) == [] and await _refund_rows(app) == rows
    after = await invoices.GetInvoice(ipb.GetInvoiceRequest(id=unpaid.id))
    assert after.status == ipb.Invoice.STATUS_OPEN and after.amount_remaining.amount_minor == 6000

    # Paid 60.00 of 100.00: a credit of 50.00 takes the 40.00 remaining first and refunds 10.00.
    partly = await _paid(channel, 5, 6000)
    split = await invoices.CreateCreditNote(credit(partly.id, 5000, refund_method=PAYMENT_REFUND))
    assert (split.pre_payment_amount.amount_minor, split.post_payment_amount.amount_minor) == (4000, 1000)
    [payment] = await _payments(channel, partly.id)
    assert payment.amount_refunded == usd(1000) and await refunds_made(sandbox_url, payment) == [1]
    done = await invoices.GetInvoice(ipb.GetInvoiceRequest(id=partly.id))
    assert done.status == ipb.Invoice.STATUS_PAID


async def test_an_invoice_paid_outside_the_gateway_refuses_and_writes_nothing(
    app: App, channel: grpc.aio.Channel
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 6)
    await invoices.PayInvoice(ipb.PayInvoiceRequest(id=invoice.id, paid_out_of_band=True))
    rows = await _refund_rows(app)
    error = await failing(invoices.CreateCreditNote(credit(invoice.id, 1000, refund_method=PAYMENT_REFUND)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == "NO_REFUNDABLE_PAYMENT" and "refund_method" in (error.details() or "")
    assert details(error).info.metadata["field"] == "refund_method"
    assert details(error).info.metadata["refundable_minor"] == "0"
    listed = await invoices.ListCreditNotes(ipb.ListCreditNotesRequest(invoice_id=invoice.id))
    assert list(listed.credit_notes) == [] and await _refund_rows(app) == rows
    after = await invoices.GetInvoice(ipb.GetInvoiceRequest(id=invoice.id))
    assert after.amount_credited.amount_minor == 0
    # The other methods still take it.
    await invoices.CreateCreditNote(credit(invoice.id, 1000))


async def test_a_gateway_refund_needs_the_payments_write_scope_too(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    """CreateCreditNote asks invoices:write; sending money back through the gateway also asks what
    RefundPayment asks (payments:write), so an invoices-only service account cannot refund."""
    invoice = await _paid(channel, 10, 10000)
    rows = await _refund_rows(app)
    invoicing = frozenset({"invoices:read", "invoices:write"})
    async with channel_as(app, mint(app, Role.SERVICE, scopes=invoicing)) as narrow:
        invoices = invoice_pb2_grpc.InvoiceServiceStub(narrow)
        error = await failing(
            invoices.CreateCreditNote(credit(invoice.id, 1000, refund_method=PAYMENT_REFUND))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and reason(error) == "SCOPE_REQUIRED"
        assert details(error).info.metadata["field"] == "refund_method"
        assert details(error).info.metadata["scope"] == "payments:write"
        assert (
            list(
                (
                    await invoices.ListCreditNotes(ipb.ListCreditNotesRequest(invoice_id=invoice.id))
                ).credit_notes
            )
            == []
        )
        assert await _refund_rows(app) == rows
        await invoices.CreateCreditNote(credit(invoice.id, 1000))  # a balance credit needs no more
    async with channel_as(app, mint(app, Role.SERVICE, scopes=invoicing | {"payments:write"})) as wide:
        note = await invoice_pb2_grpc.InvoiceServiceStub(wide).CreateCreditNote(
            credit(invoice.id, 1000, refund_method=PAYMENT_REFUND)
        )
    [payment] = await _payments(channel, invoice.id)
    assert list(note.refund_ids) == [payment.refunds[0].id] and payment.amount_refunded == usd(1000)
    assert await refunds_made(sandbox_url, payment) == [1]


async def test_refunds_across_two_credit_notes_never_exceed_what_was_paid_through_the_gateway(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    """60.00 paid at the sandbox, 40.00 outside Tally: credit notes may credit 100.00, but refund
    only the 60.00 on the payment."""
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _paid(channel, 7, 6000)
    await invoices.PayInvoice(ipb.PayInvoiceRequest(id=invoice.id, paid_out_of_band=True))
    first = await invoices.CreateCreditNote(credit(invoice.id, 5000, refund_method=PAYMENT_REFUND))
    assert len(first.refund_ids) == 1
    rows = await _refund_rows(app)
    error = await failing(invoices.CreateCreditNote(credit(invoice.id, 2000, refund_method=PAYMENT_REFUND)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "REFUND_EXCEEDS_PAYMENTS"
    assert details(error).info.metadata["refundable_minor"] == "1000"
    assert await _refund_rows(app) == rows
    listed = await invoices.ListCreditNotes(ipb.ListCreditNotesRequest(invoice_id=invoice.id))
    assert [n.id for n in listed.credit_notes] == [first.id]
    [payment] = await _payments(channel, invoice.id)
    assert payment.amount_refunded == usd(5000) and await refunds_made(sandbox_url, payment) == [1]
    # What is left fits.
    last = await invoices.CreateCreditNote(credit(invoice.id, 1000, refund_method=PAYMENT_REFUND))
    [payment] = await _payments(channel, invoice.id)
    assert payment.amount_refunded == usd(6000) and len(last.refund_ids) == 1


async def test_a_refund_whose_answer_is_lost_is_settled_by_the_reconciler(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _paid(channel, 8, 10000, method="tok_refund_timeout")
    note = await invoices.CreateCreditNote(credit(invoice.id, 10000, refund_method=PAYMENT_REFUND))
    [pending] = await _payments(channel, invoice.id)
    assert [r.status for r in pending.refunds] == [Refund.STATUS_PENDING]
    assert pending.amount_refunded == usd(0) and await refunds_made(sandbox_url, pending) == [1]

    report = await PaymentReconciler(payments_of(app), clock=_Later(app, seconds=3600)).one_pass()
    assert (report.claimed, report.settled) == (1, 1)
    [done] = await _payments(channel, invoice.id)
    assert [(r.id, r.status) for r in done.refunds] == [(note.refund_ids[0], Refund.STATUS_SUCCEEDED)]
    assert done.amount_refunded == usd(10000) and await refunds_made(sandbox_url, done) == [1]
    assert (await _events(app, "payment", done.id)).count("payment.refunded") == 1


async def test_the_rest_route_refunds_and_refuses(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    invoice = await _paid(channel, 9, 10000)
    unpaid = await new_account(channel, 10)
    open_one = await invoice_pb2_grpc.InvoiceServiceStub(channel).CreateInvoice(
        one_off(unpaid.id, line("Plan", "50.00"), finalize=True)
    )
    await invoice_pb2_grpc.InvoiceServiceStub(channel).PayInvoice(
        ipb.PayInvoiceRequest(id=open_one.id, paid_out_of_band=True)
    )
    body = {
        "lines": [{"description": "Refund", "amountMinor": "2500"}],
        "reason": "REASON_DUPLICATE",
        "refundMethod": "REFUND_METHOD_PAYMENT_REFUND",
    }
    async with Gateway(app) as http:
        headers = bearer(mint(app))
        note, _ = await call(
            http, "POST", f"/v1/invoices/{invoice.id}/creditNotes", 200, json=body, headers=headers
        )
        assert note["refundMethod"] == "REFUND_METHOD_PAYMENT_REFUND" and len(note["refundIds"]) == 1
        refused, _ = await call(
            http, "POST", f"/v1/invoices/{open_one.id}/creditNotes", 409, json=body, headers=headers
        )
        assert detail(refused, "ErrorInfo")["reason"] == "NO_REFUNDABLE_PAYMENT"
    [payment] = await _payments(channel, invoice.id)
    assert payment.refunds[0].id == note["refundIds"][0] and payment.amount_refunded == usd(2500)
    assert await refunds_made(sandbox_url, payment) == [1]

"""Credit notes on InvoiceService, on each backend, through the real server: which invoices can be
credited, the cap at the invoice's total (also under concurrent creates), what the credit does to an
open invoice (amount due drops; fully credited means paid) and to a paid one (credit balance, or a
refund outside Tally), the gapless CN numbers, the audit row and outbox event, replays, listings and
who sees what.

The semantics follow Stripe's credit notes: https://docs.stripe.com/invoicing/dashboard/credit-notes
and https://docs.stripe.com/api/credit_notes (pre-payment credit reduces the amount due; post-payment
credit goes to the customer's balance or is refunded outside Stripe; the credit notes of an invoice
never exceed its total).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import select

from app.server import App
from core import db, outbox
from core.audit import AuditEventRow
from core.principal import Role
from tally.billing.v1 import invoice_pb2 as pb
from tally.billing.v1 import invoice_pb2_grpc
from tests.billing_support import new_account
from tests.integration.test_gateway import Gateway
from tests.integration.test_invoices import line, one_off, totals
from tests.support import channel_as, details, failing, mint, reason

Status = pb.Invoice.Status
CN = pb.CreditNote
CREDIT_BALANCE = CN.REFUND_METHOD_CREDIT_BALANCE
OUT_OF_BAND = CN.REFUND_METHOD_OUT_OF_BAND_REFUND


def credit(
    invoice_id: str,
    *amounts: int,
    refund_method: int = CREDIT_BALANCE,
    request_id: str = "",
    memo: str = "",
) -> pb.CreateCreditNoteRequest:
    return pb.CreateCreditNoteRequest(
        invoice_id=invoice_id,
        lines=[
            pb.NewCreditNoteLine(description=f"Credit {n}", amount_minor=a) for n, a in enumerate(amounts)
        ],
        reason=CN.REASON_ORDER_CHANGE,
        memo=memo,
        refund_method=refund_method,  # type: ignore[arg-type]
        request_id=request_id,
    )


async def _open_invoice(channel: grpc.aio.Channel, n: int, price: str = "100.00") -> pb.Invoice:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, n)
    return await invoices.CreateInvoice(one_off(account.id, line("Plan", price), finalize=True))


async def _events(app: App, resource_type: str, resource_id: str) -> list[outbox.OutboxEvent]:
    async with db.session_factory(db.read_only(app.engine))() as session:
        found = await outbox.read_events(session, 0, 10_000)
    return [e for e in found if e.resource_type == resource_type and e.resource_id == resource_id]


async def _audit(app: App, resource_id: str) -> list[AuditEventRow]:
    async with db.session_factory(db.read_only(app.engine))() as session:
        statement = select(AuditEventRow).where(AuditEventRow.resource_id == resource_id)
        return list((await session.execute(statement)).scalars())


async def test_credit_on_an_open_invoice_lowers_the_amount_due_until_it_is_paid(
    app: App, channel: grpc.aio.Channel
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 1)
    assert totals(invoice) == (10000, 0, 10000, 0, 10000)

    first = await invoices.CreateCreditNote(credit(invoice.id, 2500, 1500, memo="two seats fewer"))
    assert first.number == "CN-000001" and first.invoice_id == invoice.id
    assert first.account_id == invoice.account_id and first.currency_code == "USD"
    assert [ln.amount.amount_minor for ln in first.lines] == [2500, 1500]
    assert first.total.amount_minor == 4000 and first.memo == "two seats fewer"
    assert (first.pre_payment_amount.amount_minor, first.post_payment_amount.amount_minor) == (4000, 0)
    assert first.reason == CN.REASON_ORDER_CHANGE and first.refund_method == CREDIT_BALANCE

    partly = await invoices.GetInvoice(pb.GetInvoiceRequest(id=invoice.id))
    assert partly.status == Status.STATUS_OPEN
    assert totals(partly) == (10000, 0, 6000, 0, 6000)  # total unchanged; amount due drops
    assert partly.amount_credited.amount_minor == 4000
    assert partly.pre_payment_credit_notes_amount.amount_minor == 4000
    assert partly.post_payment_credit_notes_amount.amount_minor == 0

    rest = await invoices.CreateCreditNote(credit(invoice.id, 6000))
    assert rest.number == "CN-000002"
    paid = await invoices.GetInvoice(pb.GetInvoiceRequest(id=invoice.id))
    assert paid.status == Status.STATUS_PAID and paid.HasField("paid_time")
    assert totals(paid) == (10000, 0, 0, 0, 0) and paid.amount_credited.amount_minor == 10000

    # Fully credited: nothing more can be credited, and a credited invoice cannot be voided.
    error = await failing(invoices.CreateCreditNote(credit(invoice.id, 1)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == "CREDIT_NOTE_EXCEEDS_INVOICE"
    assert details(error).info.metadata["creditable_minor"] == "0"

    types = [e.type for e in await _events(app, "invoice", invoice.id)]
    # One invoice.paid, from the credit note that left nothing to pay (finalizing left it open).
    assert types == [
        "invoice.created",
        "invoice.finalized",
        "invoice.credited",
        "invoice.credited",
        "invoice.paid",
    ]
    note_events = await _events(app, "credit_note", first.id)
    assert [e.type for e in note_events] == ["credit_note.created"]
    assert note_events[0].payload["total_minor"] == 4000
    assert note_events[0].payload["invoice_id"] == invoice.id
    assert [row.action for row in await _audit(app, first.id)] == ["created"]


async def test_credit_on_a_paid_invoice_goes_to_the_refund_method(channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 2)
    await invoices.PayInvoice(pb.PayInvoiceRequest(id=invoice.id, paid_out_of_band=True))

    refunded = await invoices.CreateCreditNote(credit(invoice.id, 1000, refund_method=OUT_OF_BAND))
    assert (refunded.pre_payment_amount.amount_minor, refunded.post_payment_amount.amount_minor) == (0, 1000)
    to_balance = await invoices.CreateCreditNote(credit(invoice.id, 3000))
    assert to_balance.post_payment_amount.amount_minor == 3000
    after = await invoices.GetInvoice(pb.GetInvoiceRequest(id=invoice.id))
    assert after.status == Status.STATUS_PAID and totals(after) == (10000, 0, 10000, 10000, 0)
    assert after.post_payment_credit_notes_amount.amount_minor == 4000

    # The credit balance (3000, not the 1000 refunded outside Tally) goes to the next finalized invoice.
    following = await invoices.CreateInvoice(
        one_off(invoice.account_id, line("Next", "50.00"), finalize=True)
    )
    assert totals(following) == (5000, 3000, 2000, 0, 2000)
    # It is spent: the one after takes nothing.
    later = await invoices.CreateInvoice(one_off(invoice.account_id, line("Later", "10.00"), finalize=True))
    assert totals(later) == (1000, 0, 1000, 0, 1000)


async def test_a_credit_beyond_the_amount_remaining_splits_into_both_parts(channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 3)
    # 25.00 of credit on the account: the invoice takes it at finalization, so 75.00 is due.
    await invoices.CreateInvoice(one_off(account.id, line("Goodwill", "25.00", credit=True), finalize=True))
    invoice = await invoices.CreateInvoice(one_off(account.id, line("Plan", "100.00"), finalize=True))
    assert totals(invoice) == (10000, 2500, 7500, 0, 7500)
    note = await invoices.CreateCreditNote(credit(invoice.id, 10000))
    assert (note.pre_payment_amount.amount_minor, note.post_payment_amount.amount_minor) == (7500, 2500)
    done = await invoices.GetInvoice(pb.GetInvoiceRequest(id=invoice.id))
    assert done.status == Status.STATUS_PAID and totals(done) == (10000, 2500, 0, 0, 0)
    # The 25.00 the invoice took comes back as credit balance for the next invoice.
    following = await invoices.CreateInvoice(one_off(account.id, line("Next", "40.00"), finalize=True))
    assert totals(following) == (4000, 2500, 1500, 0, 1500)


@pytest.mark.parametrize("status", ["draft", "void"])
async def test_drafts_and_void_invoices_cannot_be_credited(channel: grpc.aio.Channel, status: str) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 4)
    invoice = await invoices.CreateInvoice(one_off(account.id, line("Plan", "10.00")))
    if status == "void":
        await invoices.VoidInvoice(pb.VoidInvoiceRequest(id=invoice.id))
    error = await failing(invoices.CreateCreditNote(credit(invoice.id, 100)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "INVALID_STATE"
    assert details(error).info.metadata["status"] == status
    listed = await invoices.ListCreditNotes(pb.ListCreditNotesRequest(invoice_id=invoice.id))
    assert list(listed.credit_notes) == []


async def test_an_uncollectible_invoice_can_be_credited_and_a_credited_one_not_voided(
    channel: grpc.aio.Channel,
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 5)
    await invoices.MarkInvoiceUncollectible(pb.MarkInvoiceUncollectibleRequest(id=invoice.id))
    await invoices.CreateCreditNote(credit(invoice.id, 100))
    after = await invoices.GetInvoice(pb.GetInvoiceRequest(id=invoice.id))
    assert after.status == Status.STATUS_UNCOLLECTIBLE and after.amount_remaining.amount_minor == 9900
    error = await failing(invoices.VoidInvoice(pb.VoidInvoiceRequest(id=invoice.id)))
    assert reason(error) == "INVOICE_HAS_CREDIT_NOTES"


async def test_over_crediting_is_refused_with_the_amount_still_creditable_and_writes_nothing(
    app: App, channel: grpc.aio.Channel
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 6)
    await invoices.CreateCreditNote(credit(invoice.id, 7000))
    error = await failing(invoices.CreateCreditNote(credit(invoice.id, 2000, 1001)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == "CREDIT_NOTE_EXCEEDS_INVOICE"
    assert details(error).info.metadata["creditable_minor"] == "3000"
    # Nothing half-written: no note, no number taken, the invoice unchanged.
    listed = await invoices.ListCreditNotes(pb.ListCreditNotesRequest(invoice_id=invoice.id))
    assert [n.number for n in listed.credit_notes] == ["CN-000001"]
    exact = await invoices.CreateCreditNote(credit(invoice.id, 3000))
    assert exact.number == "CN-000002"
    assert totals(await invoices.GetInvoice(pb.GetInvoiceRequest(id=invoice.id))) == (10000, 0, 0, 0, 0)


async def test_concurrent_credit_notes_cannot_exceed_the_total(channel: grpc.aio.Channel) -> None:
    """Two creates at once (on PostgreSQL two transactions; the invoice's row lock orders them):
    each alone fits, both together would not, so exactly one wins."""
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 7)
    results = await asyncio.gather(
        invoices.CreateCreditNote(credit(invoice.id, 6000)),
        invoices.CreateCreditNote(credit(invoice.id, 6000)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, pb.CreditNote)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert reason(lost[0]) == "CREDIT_NOTE_EXCEEDS_INVOICE"
    assert details(lost[0]).info.metadata["creditable_minor"] == "4000"
    after = await invoices.GetInvoice(pb.GetInvoiceRequest(id=invoice.id))
    assert after.amount_credited.amount_minor == 6000 and after.amount_remaining.amount_minor == 4000


async def test_numbers_are_gapless_across_concurrent_credit_notes(channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    opened = [await _open_invoice(channel, 20 + n) for n in range(4)]
    notes = await asyncio.gather(
        *(invoices.CreateCreditNote(credit(inv.id, 100 + k)) for inv in opened for k in range(3))
    )
    assert sorted(n.number for n in notes) == [f"CN-{n:06d}" for n in range(1, 13)]


async def test_a_request_id_makes_the_credit_note_once(app: App, channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 8)
    request = credit(invoice.id, 500, request_id="cn-once-1")
    first, again = await asyncio.gather(
        invoices.CreateCreditNote(request), invoices.CreateCreditNote(request)
    )
    assert first == again
    replay = await invoices.CreateCreditNote(request)
    assert replay == first
    after = await invoices.GetInvoice(pb.GetInvoiceRequest(id=invoice.id))
    assert after.amount_credited.amount_minor == 500
    assert len(await _events(app, "credit_note", first.id)) == 1
    error = await failing(invoices.CreateCreditNote(credit(invoice.id, 600, request_id="cn-once-1")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "REQUEST_ID_REUSED"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.ClearField("lines"), "lines"),
        (lambda r: r.lines.add(description="", amount_minor=1), "lines[1].description"),
        (lambda r: r.lines.add(description="x" * 301, amount_minor=1), "lines[1].description"),
        (lambda r: r.lines.add(description="x", amount_minor=0), "lines[1].amount_minor"),
        (lambda r: r.lines.add(description="x", amount_minor=-5), "lines[1].amount_minor"),
        (lambda r: r.lines.add(description="x", amount_minor=10**15 + 1), "lines[1].amount_minor"),
        (lambda r: r.lines.extend([pb.NewCreditNoteLine(description="x", amount_minor=1)] * 100), "lines"),
        (lambda r: r.ClearField("reason"), "reason"),
        (lambda r: r.ClearField("refund_method"), "refund_method"),
        (lambda r: setattr(r, "memo", "m" * 501), "memo"),
        (lambda r: r.ClearField("invoice_id"), "invoice_id"),
    ],
)
async def test_bad_requests_name_the_field_and_write_nothing(
    channel: grpc.aio.Channel, change: object, field: str
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 9)
    request = credit(invoice.id, 100)
    change(request)  # type: ignore[operator]
    error = await failing(invoices.CreateCreditNote(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details(error).violations, details(error).violations
    listed = await invoices.ListCreditNotes(pb.ListCreditNotesRequest(invoice_id=invoice.id))
    assert list(listed.credit_notes) == []


async def test_listings_by_invoice_and_by_account_page_newest_first(channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    one = await _open_invoice(channel, 10)
    two = await invoices.CreateInvoice(one_off(one.account_id, line("More", "20.00"), finalize=True))
    a = await invoices.CreateCreditNote(credit(one.id, 100))
    b = await invoices.CreateCreditNote(credit(two.id, 200))
    c = await invoices.CreateCreditNote(credit(one.id, 300))
    by_invoice = await invoices.ListCreditNotes(pb.ListCreditNotesRequest(invoice_id=one.id))
    assert [n.id for n in by_invoice.credit_notes] == [c.id, a.id]
    page = await invoices.ListCreditNotes(pb.ListCreditNotesRequest(account_id=one.account_id, page_size=2))
    rest = await invoices.ListCreditNotes(
        pb.ListCreditNotesRequest(account_id=one.account_id, page_size=2, page_token=page.next_page_token)
    )
    assert [n.id for n in (*page.credit_notes, *rest.credit_notes)] == [c.id, b.id, a.id]
    assert rest.next_page_token == ""
    assert await invoices.GetCreditNote(pb.GetCreditNoteRequest(id=b.id)) == b
    error = await failing(invoices.GetCreditNote(pb.GetCreditNoteRequest(id="cn_nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and reason(error) == "CREDIT_NOTE_NOT_FOUND"
    everything = await invoices.ListCreditNotes(pb.ListCreditNotesRequest(page_size=1000))
    assert {c.id, b.id, a.id} <= {n.id for n in everything.credit_notes}
    error = await failing(
        invoices.ListCreditNotes(pb.ListCreditNotesRequest(invoice_id=two.id, account_id="acct_other"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_customer_sees_only_its_own_credit_notes_and_creates_none(
    app: App, channel: grpc.aio.Channel
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    mine, theirs = await _open_invoice(channel, 11), await _open_invoice(channel, 12)
    own = await invoices.CreateCreditNote(credit(mine.id, 100))
    foreign = await invoices.CreateCreditNote(credit(theirs.id, 100))
    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=mine.account_id)) as customer_channel:
        customer = invoice_pb2_grpc.InvoiceServiceStub(customer_channel)
        assert await customer.GetCreditNote(pb.GetCreditNoteRequest(id=own.id)) == own
        error = await failing(customer.GetCreditNote(pb.GetCreditNoteRequest(id=foreign.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        for request in (
            pb.ListCreditNotesRequest(invoice_id=theirs.id),
            pb.ListCreditNotesRequest(account_id=theirs.account_id),
            pb.ListCreditNotesRequest(invoice_id=theirs.id, account_id=mine.account_id),
        ):
            error = await failing(customer.ListCreditNotes(request))
            assert error.code() == grpc.StatusCode.NOT_FOUND, request
        listed = await customer.ListCreditNotes(pb.ListCreditNotesRequest())  # its own account
        assert [n.id for n in listed.credit_notes] == [own.id]
        error = await failing(customer.CreateCreditNote(credit(mine.id, 1)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    token = mint(app, Role.CUSTOMER, account_id=mine.account_id)
    async with Gateway(app) as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"/v1/creditNotes/{own.id}", headers=headers) as got:
            assert got.status == 200 and (await got.json())["number"] == own.number
        async with http.get(f"/v1/creditNotes/{foreign.id}", headers=headers) as got:
            assert got.status == 404
        async with http.get("/v1/creditNotes", params={"invoiceId": mine.id}, headers=headers) as got:
            assert [n["id"] for n in (await got.json())["creditNotes"]] == [own.id]

"""InvoiceService on each backend, through the real server: drafts from pending items and one-off
lines, exact totals, gapless numbers, the credit balance, the lifecycle, idempotency and who sees what.

The credit-balance rules follow Stripe's documented customer balance (a negative invoice total is
credited to the customer and applied to the next finalized invoices): https://docs.stripe.com/invoicing/customer/balance
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pypdf
import pytest
from google.type import decimal_pb2

from app.server import App
from billing_svc.subscriptions.use_cases import create_subscription
from billing_svc.subscriptions.work import WithoutInvoices
from core.principal import SYSTEM, Role
from tally.billing.v1 import invoice_pb2 as pb
from tally.billing.v1 import invoice_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan
from tests.integration.clock_support import ts
from tests.integration.test_gateway import Gateway
from tests.support import channel_as, details, failing, mint, reason

Status = pb.Invoice.Status
FAR = datetime(2999, 1, 1, tzinfo=UTC)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def line(description: str, unit_price: str, quantity: str = "", *, credit: bool = False) -> pb.NewInvoiceLine:
    message = pb.NewInvoiceLine(
        description=description, unit_price=decimal_pb2.Decimal(value=unit_price), credit=credit
    )
    if quantity:
        message.quantity.value = quantity
    return message


def one_off(
    account_id: str, *lines: pb.NewInvoiceLine, finalize: bool = False, request_id: str = ""
) -> pb.CreateInvoiceRequest:
    return pb.CreateInvoiceRequest(
        account_id=account_id, lines=lines, finalize=finalize, request_id=request_id
    )


def totals(invoice: pb.Invoice) -> tuple[int, int, int, int, int]:
    return (
        invoice.total.amount_minor,
        invoice.credits_applied.amount_minor,
        invoice.amount_due.amount_minor,
        invoice.amount_paid.amount_minor,
        invoice.amount_remaining.amount_minor,
    )


async def _subscribe_without_signup_invoice(app: App, account_id: str, plan_id: str) -> None:
    """A subscription whose first fee is still pending: one made before sign-up invoices existed
    (CreateSubscription invoices the first period at once now)."""
    billing = app.components.services["billing"]
    deps = replace(billing.subscriptions, boundary_work=WithoutInvoices())
    await create_subscription(deps, SYSTEM, account_id=account_id, plan_id=plan_id, quantity=0, metadata={})


async def test_a_period_invoice_takes_the_pending_items_once(app: App, channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    account = await new_account(channel, 1)
    plan = await new_plan(channel, "team", base_minor=4900)
    await _subscribe_without_signup_invoice(app, account.id, plan.id)
    pending = await subs.ListPendingInvoiceItems(spb.ListPendingInvoiceItemsRequest(account_id=account.id))
    assert [item.amount.amount_minor for item in pending.items] == [4900]

    request = pb.CreateInvoiceRequest(
        account_id=account.id, period_start=ts(EPOCH), period_end=ts(FAR), lines=[line("Setup", "150.005")]
    )
    draft = await invoices.CreateInvoice(request)
    assert draft.status == Status.STATUS_DRAFT and draft.number == ""
    assert draft.reason == pb.Invoice.REASON_PERIOD
    fee, setup = draft.lines
    assert fee.kind == pb.InvoiceLine.KIND_SUBSCRIPTION_FEE and fee.pending_item_id == pending.items[0].id
    assert fee.amount.amount_minor == 4900 and fee.unit_price.value == "49.00"
    assert setup.kind == pb.InvoiceLine.KIND_ONE_OFF and setup.amount.amount_minor == 15001  # half-up, once
    assert totals(draft) == (19901, 0, 19901, 0, 19901) and draft.subtotal.amount_minor == 19901

    # The items are on the invoice now: not pending, and not taken by a second invoice.
    left = await subs.ListPendingInvoiceItems(spb.ListPendingInvoiceItemsRequest(account_id=account.id))
    assert list(left.items) == []
    error = await failing(
        invoices.CreateInvoice(
            pb.CreateInvoiceRequest(account_id=account.id, period_start=ts(EPOCH), period_end=ts(FAR))
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "NOTHING_TO_INVOICE"

    # Removing the fee line gives the item back; voiding the draft gives back what it still holds.
    edited = await invoices.RemoveInvoiceLine(
        pb.RemoveInvoiceLineRequest(invoice_id=draft.id, line_id=fee.id)
    )
    assert [ln.id for ln in edited.lines] == [setup.id] and edited.total.amount_minor == 15001
    back = await subs.ListPendingInvoiceItems(spb.ListPendingInvoiceItemsRequest(account_id=account.id))
    assert [item.id for item in back.items] == [pending.items[0].id]


async def test_finalizing_numbers_without_gaps_and_freezes(channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 2)
    first = await invoices.CreateInvoice(one_off(account.id, line("Consulting", "120.00", "2.5")))
    assert first.lines[0].amount.amount_minor == 30000
    second = await invoices.CreateInvoice(one_off(account.id, line("Support", "10")))
    # A failed finalization (nothing changes) takes no number: the sequence stays gapless.
    voided = await invoices.VoidInvoice(pb.VoidInvoiceRequest(id=second.id))
    error = await failing(invoices.FinalizeInvoice(pb.FinalizeInvoiceRequest(id=voided.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "INVALID_STATE"
    assert details(error).info.metadata["status"] == "void"

    opened = await invoices.FinalizeInvoice(pb.FinalizeInvoiceRequest(id=first.id))
    third = await invoices.CreateInvoice(one_off(account.id, line("Training", "99.99"), finalize=True))
    assert opened.status == third.status == Status.STATUS_OPEN
    assert (opened.number, third.number) == ("INV-000001", "INV-000002")
    assert opened.HasField("finalize_time") and opened.HasField("due_time")

    error = await failing(
        invoices.AddInvoiceLine(pb.AddInvoiceLineRequest(invoice_id=opened.id, line=line("x", "1")))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "INVALID_STATE"
    assert await invoices.GetInvoice(pb.GetInvoiceRequest(id=opened.id)) == opened

    paid = await invoices.PayInvoice(pb.PayInvoiceRequest(id=opened.id, paid_out_of_band=True))
    assert paid.status == Status.STATUS_PAID and totals(paid) == (30000, 0, 30000, 30000, 0)
    error = await failing(invoices.VoidInvoice(pb.VoidInvoiceRequest(id=paid.id)))
    assert reason(error) == "INVALID_STATE"

    listed = await invoices.ListInvoices(pb.ListInvoicesRequest(account_id=account.id))
    assert [inv.id for inv in listed.invoices] == [third.id, second.id, first.id]  # newest first
    only_open = await invoices.ListInvoices(
        pb.ListInvoicesRequest(account_id=account.id, statuses=[Status.STATUS_OPEN, Status.STATUS_VOID])
    )
    assert [inv.id for inv in only_open.invoices] == [third.id, second.id]
    page = await invoices.ListInvoices(pb.ListInvoicesRequest(account_id=account.id, page_size=2))
    rest = await invoices.ListInvoices(
        pb.ListInvoicesRequest(account_id=account.id, page_size=2, page_token=page.next_page_token)
    )
    assert [inv.id for inv in (*page.invoices, *rest.invoices)] == [third.id, second.id, first.id]
    assert rest.next_page_token == ""


async def test_a_negative_total_becomes_credit_the_next_invoices_take(channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 3)
    refund = await invoices.CreateInvoice(
        one_off(account.id, line("Goodwill", "25.00", credit=True), finalize=True)
    )
    assert refund.lines[0].kind == pb.InvoiceLine.KIND_CREDIT
    assert refund.status == Status.STATUS_PAID and totals(refund) == (-2500, 0, 0, 0, 0)

    small = await invoices.CreateInvoice(one_off(account.id, line("Add-on", "10.00"), finalize=True))
    assert small.status == Status.STATUS_PAID and totals(small) == (1000, 1000, 0, 0, 0)
    larger = await invoices.CreateInvoice(one_off(account.id, line("Plan", "40.00"), finalize=True))
    assert larger.status == Status.STATUS_OPEN and totals(larger) == (4000, 1500, 2500, 0, 2500)

    # Voiding gives the credit it took back to the account, for the next invoice.
    await invoices.VoidInvoice(pb.VoidInvoiceRequest(id=larger.id))
    after = await invoices.CreateInvoice(one_off(account.id, line("Plan", "40.00"), finalize=True))
    assert totals(after) == (4000, 1500, 2500, 0, 2500)


async def test_a_request_id_makes_creation_happen_once(channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 4)
    request = one_off(account.id, line("Once", "5"), finalize=True, request_id="inv-once-1")
    first, again = await asyncio.gather(invoices.CreateInvoice(request), invoices.CreateInvoice(request))
    assert first == again
    listed = await invoices.ListInvoices(pb.ListInvoicesRequest(account_id=account.id))
    assert [inv.id for inv in listed.invoices] == [first.id]
    other = one_off(account.id, line("Twice", "5"), request_id="inv-once-1")
    error = await failing(invoices.CreateInvoice(other))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "REQUEST_ID_REUSED"


@pytest.mark.parametrize(
    ("request_of", "field"),
    [
        (lambda a: pb.CreateInvoiceRequest(account_id=a), None),
        (lambda a: one_off(a, pb.NewInvoiceLine(description="x")), "lines[0].unit_price"),
        (lambda a: one_off(a, line("", "1")), "lines[0].description"),
        (lambda a: one_off(a, line("x", "-1")), "lines[0].unit_price.value"),
        (lambda a: one_off(a, line("x", "1", "0")), "lines[0].quantity"),
        (lambda a: one_off(a, line("x", "1.0000000000001")), "lines[0].unit_price.value"),
        (
            lambda a: pb.CreateInvoiceRequest(account_id=a, period_start=ts(FAR), period_end=ts(EPOCH)),
            "period_end",
        ),
        (lambda a: pb.CreateInvoiceRequest(account_id=a, period_start=ts(EPOCH)), "period_end"),
        (lambda a: one_off(a, *[line("x", "1")] * 101), "lines"),
    ],
)
async def test_bad_requests_name_the_field_and_write_nothing(
    channel: grpc.aio.Channel, request_of: object, field: str | None
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 5)
    error = await failing(invoices.CreateInvoice(request_of(account.id)))  # type: ignore[operator]
    if field is None:
        assert reason(error) == "NOTHING_TO_INVOICE"
    else:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in details(error).violations, details(error).violations
    listed = await invoices.ListInvoices(pb.ListInvoicesRequest(account_id=account.id))
    assert list(listed.invoices) == []


async def test_a_customer_sees_only_its_own_invoices(app: App, channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    mine, theirs = await new_account(channel, 6), await new_account(channel, 7)
    own = await invoices.CreateInvoice(one_off(mine.id, line("Mine", "1"), finalize=True))
    foreign = await invoices.CreateInvoice(one_off(theirs.id, line("Theirs", "1"), finalize=True))
    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=mine.id)) as customer_channel:
        customer = invoice_pb2_grpc.InvoiceServiceStub(customer_channel)
        assert await customer.GetInvoice(pb.GetInvoiceRequest(id=own.id)) == own
        error = await failing(customer.GetInvoice(pb.GetInvoiceRequest(id=foreign.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        listed = await customer.ListInvoices(pb.ListInvoicesRequest(account_id=mine.id))
        assert [inv.id for inv in listed.invoices] == [own.id]
        error = await failing(customer.ListInvoices(pb.ListInvoicesRequest(account_id=theirs.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = await failing(customer.FinalizeInvoice(pb.FinalizeInvoiceRequest(id=own.id)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_concurrent_finalizations_share_one_gapless_sequence(channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    accounts = [await new_account(channel, 10 + n) for n in range(4)]
    drafts = [
        await invoices.CreateInvoice(one_off(account.id, line(f"Item {k}", "1")))
        for account in accounts
        for k in range(5)
    ]
    done = await asyncio.gather(
        *(invoices.FinalizeInvoice(pb.FinalizeInvoiceRequest(id=d.id)) for d in drafts)
    )
    numbers = sorted(invoice.number for invoice in done)
    assert numbers == [f"INV-{n:06d}" for n in range(1, len(drafts) + 1)]


async def test_an_invoice_renders_as_html_and_pdf_over_grpc_and_rest(
    app: App, channel: grpc.aio.Channel
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 20, zone="America/New_York")
    done = await invoices.CreateInvoice(one_off(account.id, line("Onboarding <b>", "150.00"), finalize=True))
    page = await invoices.RenderInvoice(pb.RenderInvoiceRequest(id=done.id))
    assert page.content_type == "text/html; charset=utf-8"
    assert done.number in page.data.decode() and "Onboarding &lt;b&gt;" in page.data.decode()
    pdf = await invoices.RenderInvoice(
        pb.RenderInvoiceRequest(id=done.id, format=pb.RenderInvoiceRequest.FORMAT_PDF)
    )
    assert pdf.content_type == "application/pdf" and pdf.data.startswith(b"%PDF-")
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf.data)).pages)
    assert done.number in text and "$150.00" in text
    # Addressed to the account, as it is named now.
    assert f"Bill to: {account.display_name}" in text and f"Email: {account.email}" in text
    assert account.display_name in page.data.decode() and account.email in page.data.decode()
    error = await failing(invoices.RenderInvoice(pb.RenderInvoiceRequest(id=done.id, locale="no such")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "locale" in details(error).violations

    customer = mint(app, Role.CUSTOMER, account_id=account.id)
    async with Gateway(app) as http:
        headers = {"Authorization": f"Bearer {customer}"}
        async with http.get(
            f"/v1/invoices/{done.id}:render", params={"format": "FORMAT_PDF"}, headers=headers
        ) as got:
            assert got.status == 200 and got.headers["Content-Type"] == "application/pdf"
            assert await got.read() == pdf.data  # the bytes exactly, not JSON
        async with http.get(
            f"/v1/invoices/{done.id}:render", params={"locale": "de_DE"}, headers=headers
        ) as got:
            assert got.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "150,00" in await got.text()
        async with http.get("/v1/invoices/inv_nope:render", headers=headers) as got:
            assert got.status == 404 and got.headers["Content-Type"].startswith("application/json")
            assert (await got.json())["code"] == grpc.StatusCode.NOT_FOUND.value[0]

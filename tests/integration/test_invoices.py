"""InvoiceService on each backend, through the real server: drafts from pending items and one-off
lines, exact totals, gapless numbers, the credit balance, the lifecycle, idempotency and who sees what.

The credit-balance rules follow Stripe's documented customer balance (a negative invoice total is
credited to the customer and applied to the next finalized invoices): https://docs.stripe.com/invoicing/customer/balance
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import pypdf
import pytest
from google.protobuf import timestamp_pb2
from google.type import decimal_pb2

from app.server import App
from billing_svc.subscriptions.use_cases import create_subscription
from billing_svc.subscriptions.work import WithoutInvoices
from core.principal import SYSTEM, Role
from tally.billing.v1 import invoice_pb2 as pb
from tally.billing.v1 import invoice_pb2_grpc, test_clock_pb2_grpc
from tally.billing.v1 import test_clock_pb2 as tpb
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan, per_seat
from tests.integration.clock_support import T0, at, new_clock, ts
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


async def test_the_sign_up_invoice_bills_seats_on_a_seats_line(channel: grpc.aio.Channel) -> None:
    """A per-seat price times the subscription's quantity is a KIND_SEATS line of its own, beside the
    base fee, with the quantity, the unit price and the amount as stored."""
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    account = await new_account(channel, 31)
    plan = await new_plan(channel, "seated", base_minor=2000, seat_price=per_seat("12.50"))
    subscription = await subs.CreateSubscription(
        spb.CreateSubscriptionRequest(
            subscription=spb.Subscription(account_id=account.id, plan_id=plan.id, quantity=3)
        )
    )
    listed = await invoices.ListInvoices(
        pb.ListInvoicesRequest(account_id=account.id, subscription_id=subscription.id)
    )
    [signup] = listed.invoices
    stored = await invoices.GetInvoice(pb.GetInvoiceRequest(id=signup.id))
    by_kind = {ln.kind: ln for ln in stored.lines}
    assert sorted(by_kind) == [pb.InvoiceLine.KIND_SUBSCRIPTION_FEE, pb.InvoiceLine.KIND_SEATS]
    seats = by_kind[pb.InvoiceLine.KIND_SEATS]
    assert (seats.quantity.value, seats.unit_price.value, seats.amount.amount_minor) == ("3", "12.50", 3750)
    assert seats.subscription_id == subscription.id
    assert (seats.period_start, seats.period_end) == (
        subscription.current_period_start,
        subscription.current_period_end,
    )
    assert by_kind[pb.InvoiceLine.KIND_SUBSCRIPTION_FEE].amount.amount_minor == 2000
    assert stored.total.amount_minor == 5750


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


def history(account_id: str, **filters: object) -> pb.ListInvoicesRequest:
    return pb.ListInvoicesRequest(account_id=account_id, **filters)  # type: ignore[arg-type]


async def test_the_billing_history_filters_by_status_subscription_and_creation_time(
    app: App, channel: grpc.aio.Channel
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    clocks = test_clock_pb2_grpc.TestClockServiceStub(channel)
    clock = await clocks.CreateTestClock(tpb.CreateTestClockRequest(test_clock=new_clock(frozen_time=T0)))
    account, other = await new_account(channel, 30), await new_account(channel, 31)
    await clocks.AttachAccount(tpb.AttachAccountRequest(id=clock.id, account_id=account.id))
    basic, extra = await new_plan(channel, "basic", base_minor=1000), await new_plan(channel, "extra")
    hour = [T0 + timedelta(hours=n) for n in range(5)]

    async def move_to(n: int) -> None:
        await clocks.AdvanceTestClock(tpb.AdvanceTestClockRequest(id=clock.id, frozen_time=ts(hour[n])))

    async def subscribe(plan_id: str) -> spb.Subscription:
        new = spb.Subscription(account_id=account.id, plan_id=plan_id)
        return await subs.CreateSubscription(spb.CreateSubscriptionRequest(subscription=new))

    # The history, an hour apart on the account's clock: two sign-up invoices, two one-offs, a draft.
    sub_a = await subscribe(basic.id)
    await move_to(1)
    one = await invoices.CreateInvoice(one_off(account.id, line("One", "1"), finalize=True))
    await move_to(2)
    sub_b = await subscribe(extra.id)
    await move_to(3)
    draft = await invoices.CreateInvoice(one_off(account.id, line("Draft", "1")))
    await move_to(4)
    four = await invoices.CreateInvoice(one_off(account.id, line("Four", "1"), finalize=True))
    await invoices.CreateInvoice(one_off(other.id, line("Another account's", "1"), finalize=True))
    everything = (await invoices.ListInvoices(history(account.id))).invoices
    assert [at(inv.create_time) for inv in everything] == hour[::-1]  # newest first
    of_a, of_b = (next(inv for inv in everything if inv.subscription_id == s.id) for s in (sub_a, sub_b))
    assert at(of_a.create_time) == hour[0] and at(of_b.create_time) == hour[2]
    assert at(one.create_time) == hour[1] and at(draft.create_time) == hour[3]

    async def ids_of(**filters: object) -> list[str]:
        return [inv.id for inv in (await invoices.ListInvoices(history(account.id, **filters))).invoices]

    # [start, end): the start is in, the end is out.
    assert await ids_of(create_time_start=ts(hour[1]), create_time_end=ts(hour[4])) == [
        draft.id,
        of_b.id,
        one.id,
    ]
    assert await ids_of(create_time_start=ts(hour[3])) == [four.id, draft.id]
    assert await ids_of(create_time_end=ts(hour[1])) == [of_a.id]
    assert await ids_of(create_time_start=ts(hour[4] + timedelta(microseconds=1))) == []
    # Combined with the other filters: every one given must match.
    assert await ids_of(subscription_id=sub_a.id) == [of_a.id]
    assert await ids_of(subscription_id=sub_b.id, create_time_start=ts(hour[1])) == [of_b.id]
    assert await ids_of(subscription_id=sub_a.id, create_time_start=ts(hour[1])) == []
    assert await ids_of(subscription_id="sub_nope") == []
    assert await ids_of(statuses=[Status.STATUS_DRAFT, Status.STATUS_VOID], create_time_end=ts(hour[4])) == [
        draft.id
    ]
    assert (
        await ids_of(statuses=[Status.STATUS_DRAFT], subscription_id=sub_b.id, create_time_start=ts(hour[1]))
        == []
    )

    # Pages of a ranged listing; a token is refused with any filter changed, and kept without.
    ranged = {"create_time_start": ts(hour[1]), "create_time_end": ts(hour[4])}
    first = await invoices.ListInvoices(history(account.id, page_size=2, **ranged))
    rest = await invoices.ListInvoices(
        history(account.id, page_size=2, page_token=first.next_page_token, **ranged)
    )
    assert [inv.id for inv in (*first.invoices, *rest.invoices)] == [draft.id, of_b.id, one.id]
    assert rest.next_page_token == ""
    changed: list[dict[str, object]] = [
        {"create_time_start": ts(hour[1])},
        {"create_time_end": ts(hour[4])},
        {**ranged, "create_time_end": ts(hour[3])},
        {**ranged, "subscription_id": sub_b.id},
        {**ranged, "statuses": [Status.STATUS_OPEN]},
    ]
    for filters in changed:
        error = await failing(
            invoices.ListInvoices(
                history(account.id, page_size=2, page_token=first.next_page_token, **filters)
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, filters
        assert "page_token" in details(error).violations, filters
    unranged = await invoices.ListInvoices(history(account.id, page_size=2))
    error = await failing(
        invoices.ListInvoices(history(account.id, page_token=unranged.next_page_token, **ranged))
    )
    assert "page_token" in details(error).violations

    # Over REST: the same filters as query parameters, RFC 3339 times.
    async with Gateway(app) as http:
        headers = {"Authorization": f"Bearer {mint(app)}"}
        query = [
            ("statuses", "STATUS_OPEN"),
            ("statuses", "STATUS_DRAFT"),
            ("createTimeStart", hour[1].isoformat()),
            ("createTimeEnd", hour[4].isoformat()),
        ]
        async with http.get(f"/v1/accounts/{account.id}/invoices", params=query, headers=headers) as got:
            assert got.status == 200, await got.text()
            assert [inv["id"] for inv in (await got.json())["invoices"]] == [draft.id, of_b.id, one.id]
        query = [("subscriptionId", sub_b.id), ("create_time_end", hour[2].isoformat())]
        async with http.get(f"/v1/accounts/{account.id}/invoices", params=query, headers=headers) as got:
            assert got.status == 200 and "invoices" not in await got.json()  # B's invoice is at hour 2
        query = [("createTimeStart", hour[2].isoformat()), ("createTimeEnd", hour[2].isoformat())]
        async with http.get(f"/v1/accounts/{account.id}/invoices", params=query, headers=headers) as got:
            assert got.status == 400 and "create_time_end" in await got.text()


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"create_time_start": ts(EPOCH), "create_time_end": ts(EPOCH)}, "create_time_end"),
        ({"create_time_start": ts(FAR), "create_time_end": ts(EPOCH)}, "create_time_end"),
        ({"create_time_start": timestamp_pb2.Timestamp(seconds=-(10**12))}, "create_time_start"),
        ({"create_time_end": timestamp_pb2.Timestamp(seconds=1, nanos=-1)}, "create_time_end"),
    ],
)
async def test_a_bad_creation_range_is_refused_naming_the_field(
    channel: grpc.aio.Channel, filters: dict[str, object], field: str
) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, 32)
    error = await failing(invoices.ListInvoices(history(account.id, **filters)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(details(error).violations) == [field], details(error).violations


async def test_a_customers_filtered_history_is_its_own(app: App, channel: grpc.aio.Channel) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    mine, theirs = await new_account(channel, 33), await new_account(channel, 34)
    own = await invoices.CreateInvoice(one_off(mine.id, line("Mine", "1"), finalize=True))
    await invoices.CreateInvoice(one_off(theirs.id, line("Theirs", "1"), finalize=True))
    ranged = {"create_time_start": ts(EPOCH), "create_time_end": ts(FAR), "statuses": [Status.STATUS_OPEN]}
    customer_token = mint(app, Role.CUSTOMER, account_id=mine.id)
    async with channel_as(app, customer_token) as customer_channel:
        customer = invoice_pb2_grpc.InvoiceServiceStub(customer_channel)
        listed = await customer.ListInvoices(history(mine.id, **ranged))
        assert [inv.id for inv in listed.invoices] == [own.id]
        error = await failing(customer.ListInvoices(history(theirs.id, **ranged)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    async with Gateway(app) as http:
        headers = {"Authorization": f"Bearer {customer_token}"}
        query = {"createTimeStart": EPOCH.isoformat(), "createTimeEnd": FAR.isoformat()}
        async with http.get(f"/v1/accounts/{mine.id}/invoices", params=query, headers=headers) as got:
            assert [inv["id"] for inv in (await got.json())["invoices"]] == [own.id]
        async with http.get(f"/v1/accounts/{theirs.id}/invoices", params=query, headers=headers) as got:
            assert got.status == 404

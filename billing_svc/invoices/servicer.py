"""gRPC face of the invoice service: decode the proto, call one use case, encode the reply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import grpc
from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from billing_svc.clocks.servicer import timestamp_from_proto
from billing_svc.invoices import credit_note_use_cases, use_cases
from billing_svc.invoices.credit_notes import CreditNote, CreditNoteReason, RefundMethod
from billing_svc.invoices.domain import Invoice, InvoiceLine, InvoiceStatus, LineKind, TimeRange
from billing_svc.invoices.use_cases import InvoiceDeps, NewLine
from core.errors import FailedPrecondition, InvalidArgument
from core.money import Money
from core.money_proto import decimal_from_proto, decimal_to_proto, money_to_proto
from core.principal import Caller, caller_for
from tally.billing.v1 import invoice_pb2, invoice_pb2_grpc
from tally.type.v1 import money_pb2

S = TypeVar("S")
_SERVICE = invoice_pb2.DESCRIPTOR.services_by_name["InvoiceService"].full_name
_Status = invoice_pb2.Invoice.Status
_STATUS = {status: _Status.Value(f"STATUS_{status.name}") for status in InvoiceStatus}
_STATUS_FROM = {number: status for status, number in _STATUS.items()}
_REASON = {
    "period": invoice_pb2.Invoice.REASON_PERIOD,
    "one_off": invoice_pb2.Invoice.REASON_ONE_OFF,
    "subscription_cycle": invoice_pb2.Invoice.REASON_SUBSCRIPTION_CYCLE,
}
_CN = invoice_pb2.CreditNote
_CN_REASON = {reason: _CN.Reason.Value(f"REASON_{reason.name}") for reason in CreditNoteReason}
_CN_REASON_FROM = {number: reason for reason, number in _CN_REASON.items()}
_REFUND = {method: _CN.RefundMethod.Value(f"REFUND_METHOD_{method.name}") for method in RefundMethod}
_REFUND_FROM = {number: method for method, number in _REFUND.items()}
_KIND = {kind: invoice_pb2.InvoiceLine.Kind.Value(f"KIND_{kind.name}") for kind in LineKind}


def optional_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def statuses_from(numbers: Iterable[int], known: Mapping[Any, S]) -> list[S]:
    """A request's `statuses` filter: each a known status, never STATUS_UNSPECIFIED."""
    statuses = []
    for index, number in enumerate(numbers):
        if number not in known:
            raise InvalidArgument.field(
                f"statuses[{index}]", "must be a known status, not STATUS_UNSPECIFIED"
            )
        statuses.append(known[number])
    return statuses


def line_to_proto(line: InvoiceLine, currency_code: str) -> invoice_pb2.InvoiceLine:
    return invoice_pb2.InvoiceLine(
        id=line.id,
        kind=_KIND[line.kind],
        description=line.description,
        quantity=decimal_to_proto(line.quantity),
        unit_price=None if line.unit_price is None else decimal_to_proto(line.unit_price),
        amount=money_to_proto(Money(currency_code, line.amount_minor)),
        period_start=optional_timestamp(line.period_start),
        period_end=optional_timestamp(line.period_end),
        subscription_id=line.subscription_id,
        pending_item_id=line.pending_item_id,
        meter_id=line.meter_id,
        tiers=[
            invoice_pb2.LineTier(
                tier_index=tier.tier_index,
                units=decimal_to_proto(tier.units),
                unit_price=decimal_to_proto(tier.unit_price),
                flat_fee=decimal_to_proto(tier.flat_fee),
                amount=decimal_to_proto(tier.amount),
            )
            for tier in line.tiers
        ],
    )


def invoice_to_proto(invoice: Invoice) -> invoice_pb2.Invoice:
    money = money_in(invoice.currency_code)

    return invoice_pb2.Invoice(
        id=invoice.id,
        account_id=invoice.account_id,
        subscription_id=invoice.subscription_id,
        number=invoice.number,
        status=_STATUS[invoice.status],
        reason=_REASON[invoice.reason.value],
        currency_code=invoice.currency_code,
        period_start=optional_timestamp(invoice.period_start),
        period_end=optional_timestamp(invoice.period_end),
        lines=[line_to_proto(line, invoice.currency_code) for line in invoice.lines],
        subtotal=money(invoice.subtotal_minor),
        total=money(invoice.total_minor),
        credits_applied=money(invoice.credits_applied_minor),
        amount_due=money(invoice.amount_due_minor),
        amount_paid=money(invoice.amount_paid_minor),
        amount_remaining=money(invoice.amount_remaining_minor),
        description=invoice.description,
        create_time=optional_timestamp(invoice.create_time),
        update_time=optional_timestamp(invoice.update_time),
        finalize_time=optional_timestamp(invoice.finalize_time),
        due_time=optional_timestamp(invoice.due_time),
        paid_time=optional_timestamp(invoice.paid_time),
        void_time=optional_timestamp(invoice.void_time),
        amount_credited=money(invoice.amount_credited_minor),
        pre_payment_credit_notes_amount=money(invoice.credited_pre_payment_minor),
        post_payment_credit_notes_amount=money(invoice.credited_post_payment_minor),
    )


def money_in(currency_code: str) -> Callable[[int], money_pb2.Money]:
    return lambda amount_minor: money_to_proto(Money(currency_code, amount_minor))


def credit_note_to_proto(note: CreditNote) -> invoice_pb2.CreditNote:
    money = money_in(note.currency_code)

    return invoice_pb2.CreditNote(
        id=note.id,
        number=note.number,
        invoice_id=note.invoice_id,
        account_id=note.account_id,
        currency_code=note.currency_code,
        lines=[
            invoice_pb2.CreditNoteLine(
                id=line.id, description=line.description, amount=money(line.amount_minor)
            )
            for line in note.lines
        ],
        total=money(note.total_minor),
        reason=_CN_REASON[note.reason],
        memo=note.memo,
        refund_method=_REFUND[note.refund_method],
        pre_payment_amount=money(note.pre_payment_minor),
        post_payment_amount=money(note.post_payment_minor),
        create_time=optional_timestamp(note.create_time),
        refund_ids=list(note.refund_ids),
    )


def new_line_from_proto(message: invoice_pb2.NewInvoiceLine, path: str) -> NewLine:
    quantity = Decimal(1)
    if message.quantity.value:  # unset, null or empty: 1
        quantity = decimal_from_proto(message.quantity, field=f"{path}.quantity")
    if not message.HasField("unit_price"):
        raise InvalidArgument.field(f"{path}.unit_price", "is required")
    unit_price = decimal_from_proto(message.unit_price, field=f"{path}.unit_price")
    return NewLine(message.description, quantity, unit_price, message.credit)


def _caller(method: str, request_id: str = "") -> Caller:
    return caller_for(f"/{_SERVICE}/{method}", request_id)


# PayInvoice without paid_out_of_band: charge the invoice through its account's payment gateway
# (caller, invoice id, payment method), wired in by billing_svc/module.py.
CollectInvoice = Callable[[Caller, str, str], Awaitable[None]]


class InvoiceServicer(invoice_pb2_grpc.InvoiceServiceServicer):
    def __init__(self, deps: InvoiceDeps, collect: CollectInvoice | None = None):
        self._deps = deps
        self._collect = collect

    async def CreateInvoice(
        self, request: invoice_pb2.CreateInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.Invoice:
        command = use_cases.CreateInvoice(
            account_id=request.account_id,
            period_start=timestamp_from_proto(
                request.period_start, request.HasField("period_start"), "period_start"
            ),
            period_end=timestamp_from_proto(request.period_end, request.HasField("period_end"), "period_end"),
            lines=tuple(new_line_from_proto(line, f"lines[{i}]") for i, line in enumerate(request.lines)),
            description=request.description,
            finalize=request.finalize,
        )
        caller = _caller("CreateInvoice", request.request_id)
        return invoice_to_proto(await use_cases.create_invoice(self._deps, caller, command))

    async def GetInvoice(
        self, request: invoice_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.Invoice:
        return invoice_to_proto(await use_cases.get_invoice(self._deps, _caller("GetInvoice"), request.id))

    async def ListInvoices(
        self, request: invoice_pb2.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.ListInvoicesResponse:
        statuses = statuses_from(request.statuses, _STATUS_FROM)
        page = await use_cases.list_invoices(
            self._deps,
            _caller("ListInvoices"),
            request.account_id,
            statuses=statuses,
            subscription_id=request.subscription_id,
            created=TimeRange(
                timestamp_from_proto(
                    request.create_time_start, request.HasField("create_time_start"), "create_time_start"
                ),
                timestamp_from_proto(
                    request.create_time_end, request.HasField("create_time_end"), "create_time_end"
                ),
            ),
            size=request.page_size,
            page_token=request.page_token,
        )
        return invoice_pb2.ListInvoicesResponse(
            invoices=[invoice_to_proto(invoice) for invoice in page.invoices],
            next_page_token=page.next_page_token,
        )

    async def AddInvoiceLine(
        self, request: invoice_pb2.AddInvoiceLineRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.Invoice:
        if not request.HasField("line"):
            raise InvalidArgument.field("line", "is required")
        command = use_cases.AddInvoiceLine(request.invoice_id, new_line_from_proto(request.line, "line"))
        caller = _caller("AddInvoiceLine", request.request_id)
        return invoice_to_proto(await use_cases.add_invoice_line(self._deps, caller, command))

    async def RemoveInvoiceLine(
        self, request: invoice_pb2.RemoveInvoiceLineRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.Invoice:
        command = use_cases.RemoveInvoiceLine(request.invoice_id, request.line_id)
        caller = _caller("RemoveInvoiceLine", request.request_id)
        return invoice_to_proto(await use_cases.remove_invoice_line(self._deps, caller, command))

    async def FinalizeInvoice(
        self, request: invoice_pb2.FinalizeInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.Invoice:
        caller = _caller("FinalizeInvoice", request.request_id)
        command = use_cases.FinalizeInvoice(request.id)
        return invoice_to_proto(await use_cases.finalize_invoice(self._deps, caller, command))

    async def VoidInvoice(
        self, request: invoice_pb2.VoidInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.Invoice:
        caller = _caller("VoidInvoice", request.request_id)
        return invoice_to_proto(
            await use_cases.void_invoice(self._deps, caller, use_cases.VoidInvoice(request.id))
        )

    async def MarkInvoiceUncollectible(
        self, request: invoice_pb2.MarkInvoiceUncollectibleRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.Invoice:
        caller = _caller("MarkInvoiceUncollectible", request.request_id)
        command = use_cases.MarkInvoiceUncollectible(request.id)
        return invoice_to_proto(await use_cases.mark_uncollectible(self._deps, caller, command))

    async def PayInvoice(
        self, request: invoice_pb2.PayInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.Invoice:
        caller = _caller("PayInvoice", request.request_id)
        if not request.paid_out_of_band:
            if self._collect is None:
                raise FailedPrecondition(
                    "collecting through a payment gateway is not available here: set paid_out_of_band to "
                    "record a payment made outside Tally",
                    reason="GATEWAY_COLLECTION_UNAVAILABLE",
                    metadata={"field": "paid_out_of_band"},
                )
            await self._collect(caller, request.id, request.payment_method)
            return invoice_to_proto(await use_cases.get_invoice(self._deps, caller, request.id))
        command = use_cases.PayInvoice(request.id)
        return invoice_to_proto(await use_cases.pay_invoice_out_of_band(self._deps, caller, command))

    async def RenderInvoice(
        self, request: invoice_pb2.RenderInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        formats = invoice_pb2.RenderInvoiceRequest.Format
        if request.format not in formats.values():
            raise InvalidArgument.field("format", f"must be one of {', '.join(formats.keys())}")
        pdf = request.format == formats.Value("FORMAT_PDF")
        rendered = await use_cases.render_invoice(
            self._deps, _caller("RenderInvoice"), request.id, pdf=pdf, locale=request.locale
        )
        return httpbody_pb2.HttpBody(content_type=rendered.content_type, data=rendered.data)

    async def CreateCreditNote(
        self, request: invoice_pb2.CreateCreditNoteRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.CreditNote:
        command = credit_note_use_cases.CreateCreditNote(
            invoice_id=request.invoice_id,
            lines=tuple(
                credit_note_use_cases.NewCreditNoteLine(line.description, line.amount_minor)
                for line in request.lines
            ),
            reason=_CN_REASON_FROM.get(request.reason),
            memo=request.memo,
            refund_method=_REFUND_FROM.get(request.refund_method),
        )
        caller = _caller("CreateCreditNote", request.request_id)
        return credit_note_to_proto(
            await credit_note_use_cases.create_credit_note(self._deps, caller, command)
        )

    async def GetCreditNote(
        self, request: invoice_pb2.GetCreditNoteRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.CreditNote:
        note = await credit_note_use_cases.get_credit_note(self._deps, _caller("GetCreditNote"), request.id)
        return credit_note_to_proto(note)

    async def ListCreditNotes(
        self, request: invoice_pb2.ListCreditNotesRequest, context: grpc.aio.ServicerContext
    ) -> invoice_pb2.ListCreditNotesResponse:
        page = await credit_note_use_cases.list_credit_notes(
            self._deps,
            _caller("ListCreditNotes"),
            invoice_id=request.invoice_id,
            account_id=request.account_id,
            size=request.page_size,
            page_token=request.page_token,
        )
        return invoice_pb2.ListCreditNotesResponse(
            credit_notes=[credit_note_to_proto(note) for note in page.credit_notes],
            next_page_token=page.next_page_token,
        )

"""Invoices' rules (billing_svc/invoices/use_cases.py, credit_note_use_cases.py, servicer.py, render.py)."""

from __future__ import annotations

from account_svc import domain as accounts
from billing_svc.invoices import credit_notes
from billing_svc.invoices import domain as invoices
from billing_svc.invoices.render import known_locales
from billing_svc.payments import domain as payments
from billing_svc.subscriptions import domain as subscriptions
from gateway.constraints.catalog import DECIMAL_TEXT, decimal_field
from gateway.constraints.common import enum_values, id_pattern
from gateway.schemas import JSON

_PKG = "tally.billing.v1"
_INVOICE_ID: JSON = {"pattern": id_pattern(invoices.ID_PREFIX)}
_ACCOUNT_ID: JSON = {"pattern": id_pattern(accounts.ID_PREFIX)}
# A quantity is a decimal above 0 (use_cases.check_new_lines): at least one digit that is not 0.
_POSITIVE = f"^(?=[^1-9]*[1-9]){DECIMAL_TEXT}$"
# credit_note_use_cases._check_create: 1 to MAX_LINE_AMOUNT_MINOR (10^15), as json_format reads an
# int64 (leading zeros allowed). No lookahead: a generator would filter too much.
_CREDIT_AMOUNT: JSON = {"type": "string", "pattern": "^0*([1-9][0-9]{0,14}|1000000000000000)$"}
assert credit_notes.MAX_LINE_AMOUNT_MINOR == 10**15
_REASONS = tuple(f"REASON_{reason.name}" for reason in credit_notes.CreditNoteReason)
_REFUND_METHODS = tuple(f"REFUND_METHOD_{method.name}" for method in credit_notes.RefundMethod)
_STATUSES = ("STATUS_DRAFT", "STATUS_OPEN", "STATUS_PAID", "STATUS_VOID", "STATUS_UNCOLLECTIBLE")

INVOICE_FIELDS: dict[str, JSON] = {
    f"{_PKG}.CreateInvoiceRequest.account_id": _ACCOUNT_ID,
    f"{_PKG}.CreateInvoiceRequest.description": {"maxLength": invoices.MAX_DESCRIPTION},
    f"{_PKG}.CreateInvoiceRequest.lines": {"maxItems": invoices.MAX_NEW_LINES},
    f"{_PKG}.NewInvoiceLine.description": {"minLength": 1, "maxLength": invoices.MAX_LINE_DESCRIPTION},
    f"{_PKG}.NewInvoiceLine.unit_price": decimal_field(required=True),
    f"{_PKG}.NewInvoiceLine.quantity": decimal_field(required=False, pattern=_POSITIVE),
    f"{_PKG}.ListInvoicesRequest.account_id": _ACCOUNT_ID,
    f"{_PKG}.ListInvoicesRequest.statuses": {"items": {"enum": enum_values(_STATUSES, (1, 2, 3, 4, 5))}},
    f"{_PKG}.ListInvoicesRequest.subscription_id": {
        "pattern": f"^({id_pattern(subscriptions.ID_PREFIX)[1:-1]})?$"
    },
    f"{_PKG}.PayInvoiceRequest.payment_method": {"maxLength": payments.MAX_PAYMENT_METHOD},
    f"{_PKG}.RemoveInvoiceLineRequest.line_id": {"pattern": id_pattern(invoices.LINE_ID_PREFIX)},
    f"{_PKG}.CreateCreditNoteRequest.invoice_id": _INVOICE_ID,
    f"{_PKG}.CreateCreditNoteRequest.lines": {"minItems": 1, "maxItems": credit_notes.MAX_LINES},
    f"{_PKG}.CreateCreditNoteRequest.memo": {"maxLength": credit_notes.MAX_MEMO},
    f"{_PKG}.CreateCreditNoteRequest.reason": {
        "enum": enum_values(_REASONS, tuple(range(1, len(_REASONS) + 1)))
    },
    f"{_PKG}.CreateCreditNoteRequest.refund_method": {
        "enum": enum_values(_REFUND_METHODS, tuple(range(1, len(_REFUND_METHODS) + 1)))
    },
    f"{_PKG}.NewCreditNoteLine.description": {"minLength": 1, "maxLength": invoices.MAX_LINE_DESCRIPTION},
    f"{_PKG}.NewCreditNoteLine.amount_minor": _CREDIT_AMOUNT,
    f"{_PKG}.GetCreditNoteRequest.id": {"pattern": id_pattern(credit_notes.ID_PREFIX)},
    f"{_PKG}.ListCreditNotesRequest.invoice_id": {"pattern": f"^({_INVOICE_ID['pattern'][1:-1]})?$"},
    f"{_PKG}.ListCreditNotesRequest.account_id": {"pattern": f"^({_ACCOUNT_ID['pattern'][1:-1]})?$"},
    f"{_PKG}.RenderInvoiceRequest.locale": {"enum": ["", *sorted(known_locales())]},
    # Path ids: another id is simply not found (404), never malformed.
    **{
        f"{_PKG}.{request}Request.id": _INVOICE_ID
        for request in (
            "GetInvoice",
            "FinalizeInvoice",
            "VoidInvoice",
            "MarkInvoiceUncollectible",
            "PayInvoice",
            "RenderInvoice",
        )
    },
    **{
        f"{_PKG}.{request}Request.invoice_id": _INVOICE_ID
        for request in ("AddInvoiceLine", "RemoveInvoiceLine")
    },
}

"""Invoices' rules (billing_svc/invoices/use_cases.py, servicer.py, render.py)."""

from __future__ import annotations

from account_svc import domain as accounts
from billing_svc.invoices import domain as invoices
from billing_svc.invoices.render import known_locales
from billing_svc.subscriptions import domain as subscriptions
from gateway.constraints.catalog import DECIMAL_TEXT, decimal_field
from gateway.constraints.common import enum_values, id_pattern
from gateway.schemas import JSON

_PKG = "tally.billing.v1"
_INVOICE_ID: JSON = {"pattern": id_pattern(invoices.ID_PREFIX)}
_ACCOUNT_ID: JSON = {"pattern": id_pattern(accounts.ID_PREFIX)}
# A quantity is a decimal above 0 (use_cases.check_new_lines): at least one digit that is not 0.
_POSITIVE = f"^(?=[^1-9]*[1-9]){DECIMAL_TEXT}$"
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
    # servicer.PayInvoice: only a payment made outside Tally can be recorded for now.
    f"{_PKG}.PayInvoiceRequest.paid_out_of_band": {"enum": [True]},
    f"{_PKG}.RemoveInvoiceLineRequest.line_id": {"pattern": id_pattern(invoices.LINE_ID_PREFIX)},
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

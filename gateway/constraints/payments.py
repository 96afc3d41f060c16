"""Payments' rules (billing_svc/payments/use_cases.py, servicer.py, gateways/registry.py)."""

from __future__ import annotations

from account_svc import domain as accounts
from billing_svc.invoices import domain as invoices
from billing_svc.payments import domain as payments
from core.settings import PAYMENT_GATEWAYS
from gateway.constraints.common import enum_values, id_pattern
from gateway.schemas import JSON

_PKG = "tally.billing.v1"
_PAYMENT_ID: JSON = {"pattern": id_pattern(payments.ID_PREFIX)}
_ACCOUNT_ID: JSON = {"pattern": id_pattern(accounts.ID_PREFIX)}


def _or_empty(rule: JSON) -> JSON:
    return {"pattern": f"^({rule['pattern'][1:-1]})?$"}


_OPTIONAL_ACCOUNT = _or_empty(_ACCOUNT_ID)
_OPTIONAL_INVOICE = _or_empty({"pattern": id_pattern(invoices.ID_PREFIX)})
_STATUSES = tuple(f"STATUS_{status.name}" for status in payments.PaymentStatus)

PAYMENT_FIELDS: dict[str, JSON] = {
    f"{_PKG}.CreatePaymentRequest.account_id": _OPTIONAL_ACCOUNT,
    f"{_PKG}.CreatePaymentRequest.invoice_id": _OPTIONAL_INVOICE,
    f"{_PKG}.CreatePaymentRequest.payment_method": {"maxLength": payments.MAX_PAYMENT_METHOD},
    f"{_PKG}.CreatePaymentRequest.description": {"maxLength": payments.MAX_DESCRIPTION},
    f"{_PKG}.CreatePaymentRequest.metadata": {"maxProperties": payments.MAX_METADATA},
    f"{_PKG}.ListPaymentsRequest.account_id": _OPTIONAL_ACCOUNT,
    f"{_PKG}.ListPaymentsRequest.invoice_id": _OPTIONAL_INVOICE,
    f"{_PKG}.ListPaymentsRequest.statuses": {
        "items": {"enum": enum_values(_STATUSES, tuple(range(1, len(_STATUSES) + 1)))}
    },
    f"{_PKG}.RefundPaymentRequest.reason": {"maxLength": payments.MAX_REASON},
    f"{_PKG}.GetPaymentSettingsRequest.account_id": _ACCOUNT_ID,
    f"{_PKG}.PaymentSettings.account_id": _ACCOUNT_ID,
    f"{_PKG}.PaymentSettings.gateway": {"enum": ["", *PAYMENT_GATEWAYS]},
    f"{_PKG}.PaymentSettings.default_payment_method": {"maxLength": payments.MAX_PAYMENT_METHOD},
    # Path ids: another id is simply not found (404), never malformed.
    **{f"{_PKG}.{request}Request.id": _PAYMENT_ID for request in ("GetPayment", "RefundPayment")},
}

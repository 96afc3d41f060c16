"""Credit notes as the business sees them: corrections of a finalized invoice. No I/O.

The semantics are Stripe's (https://docs.stripe.com/invoicing/dashboard/credit-notes): a credit
note is issued on an open, paid or uncollectible invoice; the credit notes of an invoice never add
up to more than its total; a credit note first reduces what is still owed on the invoice (its
pre-payment part: an invoice left owing nothing is paid), and the rest (its post-payment part) goes
to the refund method: the account's credit balance, a refund on the invoice's payments through their
gateways (Stripe's `refund_amount`), or a refund made outside Tally.

A credit note's total is the sum of its lines, each a positive amount in minor units: exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from billing_svc.invoices.domain import Invoice, InvoiceStatus, touch
from core.errors import FailedPrecondition, NotFound
from core.text import excerpt

RESOURCE_TYPE = "credit_note"
ID_PREFIX = "cn"
LINE_ID_PREFIX = "cnl"
NUMBER_PREFIX = "CN"
MAX_MEMO = 500
MAX_LINES = 100
MAX_LINE_AMOUNT_MINOR = 10**15  # 100 of them still fit an int64
CREDITABLE = frozenset({InvoiceStatus.OPEN, InvoiceStatus.PAID, InvoiceStatus.UNCOLLECTIBLE})


class CreditNoteReason(StrEnum):
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    ORDER_CHANGE = "order_change"
    PRODUCT_UNSATISFACTORY = "product_unsatisfactory"
    OTHER = "other"


class RefundMethod(StrEnum):
    CREDIT_BALANCE = "credit_balance"
    OUT_OF_BAND_REFUND = "out_of_band_refund"
    PAYMENT_REFUND = "payment_refund"  # through the payments' refunds (invoices/ports.py CreditRefunds)


@dataclass(frozen=True)
class CreditNoteLine:
    id: str
    description: str
    amount_minor: int


@dataclass(frozen=True)
class CreditNote:
    id: str
    number: str
    invoice_id: str
    account_id: str
    currency_code: str
    lines: tuple[CreditNoteLine, ...]
    reason: CreditNoteReason
    memo: str
    refund_method: RefundMethod
    pre_payment_minor: int
    create_time: datetime
    refund_ids: tuple[str, ...] = ()  # PAYMENT_REFUND: the payment refunds it made

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)

    @property
    def post_payment_minor(self) -> int:
        return self.total_minor - self.pre_payment_minor

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "number": self.number,
            "invoice_id": self.invoice_id,
            "account_id": self.account_id,
            "currency_code": self.currency_code,
            "lines": [
                {"id": line.id, "description": line.description, "amount_minor": line.amount_minor}
                for line in self.lines
            ],
            "reason": self.reason.value,
            "memo": self.memo,
            "refund_method": self.refund_method.value,
            "pre_payment_minor": self.pre_payment_minor,
            "create_time": self.create_time.isoformat(),
            "refund_ids": list(self.refund_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CreditNote:
        return cls(
            id=data["id"],
            number=data["number"],
            invoice_id=data["invoice_id"],
            account_id=data["account_id"],
            currency_code=data["currency_code"],
            lines=tuple(
                CreditNoteLine(line["id"], line["description"], int(line["amount_minor"]))
                for line in data["lines"]
            ),
            reason=CreditNoteReason(data["reason"]),
            memo=data["memo"],
            refund_method=RefundMethod(data["refund_method"]),
            pre_payment_minor=int(data["pre_payment_minor"]),
            create_time=datetime.fromisoformat(data["create_time"]),
            refund_ids=tuple(data.get("refund_ids", ())),  # responses stored before refunds had none
        )


def creditable_minor(invoice: Invoice) -> int:
    """What credit notes may still credit on the invoice: its total less what they already did."""
    return max(max(invoice.total_minor, 0) - invoice.amount_credited_minor, 0)


def split(invoice: Invoice, total_minor: int) -> tuple[int, int]:
    """(pre-payment, post-payment): the credit reduces the amount remaining first. Refuses an
    invoice that cannot be credited, and a total beyond what is still creditable."""
    if invoice.status not in CREDITABLE:
        raise FailedPrecondition(
            f"cannot credit an invoice that is {invoice.status.value}: "
            + (
                "edit the draft instead" if invoice.status is InvoiceStatus.DRAFT else "nothing is owed on it"
            ),
            reason="INVALID_STATE",
            metadata={"id": invoice.id, "status": invoice.status.value, "action": "credit"},
        )
    left = creditable_minor(invoice)
    if total_minor > left:
        raise FailedPrecondition(
            f"the credit notes of an invoice cannot exceed its total: {left} minor units are creditable",
            reason="CREDIT_NOTE_EXCEEDS_INVOICE",
            metadata={"invoice_id": invoice.id, "creditable_minor": str(left)},
        )
    pre = min(total_minor, invoice.amount_remaining_minor)
    return pre, total_minor - pre


def credited(invoice: Invoice, note: CreditNote, now: datetime) -> Invoice:
    """The invoice after the credit note: an open or uncollectible one left owing nothing is paid."""
    done = touch(
        invoice,
        now,
        credited_pre_payment_minor=invoice.credited_pre_payment_minor + note.pre_payment_minor,
        credited_post_payment_minor=invoice.credited_post_payment_minor + note.post_payment_minor,
    )
    if done.status is not InvoiceStatus.PAID and done.amount_remaining_minor == 0:
        return replace(done, status=InvoiceStatus.PAID, paid_time=now)
    return done


def credit_note_not_found(credit_note_id: str) -> NotFound:
    return NotFound(
        f"credit note {excerpt(credit_note_id)!r} not found",
        reason="CREDIT_NOTE_NOT_FOUND",
        metadata={"id": excerpt(credit_note_id)},
    )

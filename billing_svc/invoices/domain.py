"""Invoices as the business sees them: lines, exact totals, and the lifecycle. No I/O.

An invoice's totals are derived from its lines and two stored amounts, never stored apart from
what they are made of: subtotal = total = the sum of the lines (each rounded once, when made);
credits_applied is the account's credit balance taken at finalization; amount_due = total -
credits_applied, never below 0; amount_remaining = amount_due - amount_paid. The repository keeps
subtotal and total in columns for listings, written from these properties, and a test checks
every stored invoice against the sum of its line rows.

Lifecycle: draft -> open (finalize: numbered, frozen) -> paid | void | uncollectible;
uncollectible -> paid | void; a draft may be voided too. Paid and void are final.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from core.errors import FailedPrecondition, NotFound
from core.money import to_minor_units
from core.text import excerpt

RESOURCE_TYPE = "invoice"
ID_PREFIX = "inv"
LINE_ID_PREFIX = "inl"
MAX_DESCRIPTION = 500
MAX_LINE_DESCRIPTION = 300
MAX_NEW_LINES = 100
MAX_LINES = 1000  # an invoice never holds more; a pending-items backlog beyond it waits for the next


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class InvoiceReason(StrEnum):
    PERIOD = "period"
    ONE_OFF = "one_off"
    SUBSCRIPTION_CYCLE = "subscription_cycle"


class LineKind(StrEnum):
    SUBSCRIPTION_FEE = "subscription_fee"
    SEATS = "seats"
    USAGE = "usage"
    PRORATION = "proration"
    MINIMUM_SPEND = "minimum_spend"
    ONE_OFF = "one_off"
    CREDIT = "credit"


class Action(StrEnum):
    EDIT = "edit"
    FINALIZE = "finalize"
    VOID = "void"
    MARK_UNCOLLECTIBLE = "mark_uncollectible"
    PAY = "pay"


_FROM: Mapping[Action, frozenset[InvoiceStatus]] = {
    Action.EDIT: frozenset({InvoiceStatus.DRAFT}),
    Action.FINALIZE: frozenset({InvoiceStatus.DRAFT}),
    Action.VOID: frozenset({InvoiceStatus.DRAFT, InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE}),
    Action.MARK_UNCOLLECTIBLE: frozenset({InvoiceStatus.OPEN}),
    Action.PAY: frozenset({InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE}),
}


@dataclass(frozen=True)
class LineTier:
    """One tier's exact part of a usage line (billing_svc.catalog.pricing.TierLine)."""

    tier_index: int
    units: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier_index": self.tier_index,
            **{
                name: format(getattr(self, name), "f")
                for name in ("units", "unit_price", "flat_fee", "amount")
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LineTier:
        numbers = {name: Decimal(data[name]) for name in ("units", "unit_price", "flat_fee", "amount")}
        return cls(tier_index=int(data["tier_index"]), **numbers)


@dataclass(frozen=True)
class InvoiceLine:
    id: str
    kind: LineKind
    description: str
    quantity: Decimal
    unit_price: Decimal | None  # None when the amount is not one price x quantity
    amount_minor: int
    period_start: datetime | None = None
    period_end: datetime | None = None
    subscription_id: str = ""
    pending_item_id: str = ""
    meter_id: str = ""
    tiers: tuple[LineTier, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "description": self.description,
            "quantity": format(self.quantity, "f"),
            "unit_price": None if self.unit_price is None else format(self.unit_price, "f"),
            "amount_minor": self.amount_minor,
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "subscription_id": self.subscription_id,
            "pending_item_id": self.pending_item_id,
            "meter_id": self.meter_id,
            "tiers": [tier.to_dict() for tier in self.tiers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InvoiceLine:
        return cls(
            id=data["id"],
            kind=LineKind(data["kind"]),
            description=data["description"],
            quantity=Decimal(data["quantity"]),
            unit_price=None if data["unit_price"] is None else Decimal(data["unit_price"]),
            amount_minor=int(data["amount_minor"]),
            period_start=_parse(data["period_start"]),
            period_end=_parse(data["period_end"]),
            subscription_id=data["subscription_id"],
            pending_item_id=data["pending_item_id"],
            meter_id=data["meter_id"],
            tiers=tuple(LineTier.from_dict(tier) for tier in data["tiers"]),
        )


def one_off_line(
    line_id: str,
    description: str,
    quantity: Decimal,
    unit_price: Decimal,
    currency_code: str,
    *,
    credit: bool,
) -> InvoiceLine:
    """A line of quantity x unit_price, rounded once, half-up; negative when it is a credit."""
    amount = to_minor_units(quantity * unit_price, currency_code)
    return InvoiceLine(
        id=line_id,
        kind=LineKind.CREDIT if credit else LineKind.ONE_OFF,
        description=description,
        quantity=quantity,
        unit_price=unit_price,
        amount_minor=-amount if credit else amount,
    )


@dataclass(frozen=True)
class UsageBasis:
    """What a cycle invoice bills in arrears: the metered charges of `plan_id` at `plan_version`
    over [period_start, period_end), the period its boundary closed. The usage lines are made from
    it when the draft is made and made again at finalization, so late usage still lands on it."""

    plan_id: str
    plan_version: int
    period_start: datetime
    period_end: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "plan_version": self.plan_version,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageBasis:
        return cls(
            plan_id=data["plan_id"],
            plan_version=int(data["plan_version"]),
            period_start=datetime.fromisoformat(data["period_start"]),
            period_end=datetime.fromisoformat(data["period_end"]),
        )


@dataclass(frozen=True)
class TimeRange:
    """A half-open range [start, end) of instants, open on a side that is None: the creation times
    a listing keeps (ListInvoices' create_time_start and create_time_end)."""

    start: datetime | None = None
    end: datetime | None = None


ALL_TIME = TimeRange()


# The lines made from a usage basis, replaced whole each time they are made.
USAGE_KINDS = frozenset({LineKind.USAGE, LineKind.MINIMUM_SPEND})


@dataclass(frozen=True)
class Invoice:
    id: str
    account_id: str
    subscription_id: str
    number: str
    status: InvoiceStatus
    reason: InvoiceReason
    currency_code: str
    period_start: datetime | None
    period_end: datetime | None
    lines: tuple[InvoiceLine, ...]
    description: str
    create_time: datetime
    update_time: datetime
    credits_applied_minor: int = 0
    amount_paid_minor: int = 0
    credited_pre_payment_minor: int = 0  # credit notes' part that reduced the amount due
    credited_post_payment_minor: int = 0  # their part beyond it (credit balance, refund)
    finalize_time: datetime | None = None
    due_time: datetime | None = None
    paid_time: datetime | None = None
    void_time: datetime | None = None
    revision: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict)
    usage_basis: UsageBasis | None = None
    grace_until: datetime | None = None  # a draft the billing worker finalizes then

    @property
    def subtotal_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)

    @property
    def total_minor(self) -> int:
        return self.subtotal_minor  # + taxes - discounts, when there are any

    @property
    def amount_due_minor(self) -> int:
        return max(self.total_minor - self.credits_applied_minor, 0) - self.credited_pre_payment_minor

    @property
    def amount_credited_minor(self) -> int:
        return self.credited_pre_payment_minor + self.credited_post_payment_minor

    @property
    def amount_remaining_minor(self) -> int:
        return self.amount_due_minor - self.amount_paid_minor

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "subscription_id": self.subscription_id,
            "number": self.number,
            "status": self.status.value,
            "reason": self.reason.value,
            "currency_code": self.currency_code,
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "lines": [line.to_dict() for line in self.lines],
            "description": self.description,
            "create_time": self.create_time.isoformat(),
            "update_time": self.update_time.isoformat(),
            "credits_applied_minor": self.credits_applied_minor,
            "amount_paid_minor": self.amount_paid_minor,
            "credited_pre_payment_minor": self.credited_pre_payment_minor,
            "credited_post_payment_minor": self.credited_post_payment_minor,
            "finalize_time": _iso(self.finalize_time),
            "due_time": _iso(self.due_time),
            "paid_time": _iso(self.paid_time),
            "void_time": _iso(self.void_time),
            "revision": self.revision,
            "metadata": dict(self.metadata),
            "usage_basis": None if self.usage_basis is None else self.usage_basis.to_dict(),
            "grace_until": _iso(self.grace_until),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Invoice:
        create_time = _parse(data["create_time"])
        update_time = _parse(data["update_time"])
        assert create_time is not None
        assert update_time is not None
        return cls(
            id=data["id"],
            account_id=data["account_id"],
            subscription_id=data["subscription_id"],
            number=data["number"],
            status=InvoiceStatus(data["status"]),
            reason=InvoiceReason(data["reason"]),
            currency_code=data["currency_code"],
            period_start=_parse(data["period_start"]),
            period_end=_parse(data["period_end"]),
            lines=tuple(InvoiceLine.from_dict(line) for line in data["lines"]),
            description=data["description"],
            create_time=create_time,
            update_time=update_time,
            credits_applied_minor=int(data["credits_applied_minor"]),
            amount_paid_minor=int(data["amount_paid_minor"]),
            credited_pre_payment_minor=int(data.get("credited_pre_payment_minor", 0)),
            credited_post_payment_minor=int(data.get("credited_post_payment_minor", 0)),
            finalize_time=_parse(data["finalize_time"]),
            due_time=_parse(data["due_time"]),
            paid_time=_parse(data["paid_time"]),
            void_time=_parse(data["void_time"]),
            revision=int(data["revision"]),
            metadata=dict(data["metadata"]),
            usage_basis=None
            if data.get("usage_basis") is None
            else UsageBasis.from_dict(data["usage_basis"]),
            grace_until=_parse(data.get("grace_until")),
        )


def _basis_from(data: Mapping[str, Any] | None) -> UsageBasis | None:
    return None if data is None else UsageBasis.from_dict(data)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def require(invoice: Invoice, action: Action) -> None:
    if invoice.status not in _FROM[action]:
        raise FailedPrecondition(
            f"cannot {action.value.replace('_', ' ')} an invoice that is {invoice.status.value}",
            reason="INVALID_STATE",
            metadata={"id": invoice.id, "status": invoice.status.value, "action": action.value},
        )


def invoice_not_found(invoice_id: str, field_name: str = "id") -> NotFound:
    return NotFound(
        f"invoice {excerpt(invoice_id)!r} not found",
        reason="INVOICE_NOT_FOUND",
        metadata={field_name: excerpt(invoice_id)},
    )


def touch(invoice: Invoice, now: datetime, **changes: Any) -> Invoice:
    return replace(invoice, update_time=now, revision=invoice.revision + 1, **changes)


def with_lines(invoice: Invoice, lines: tuple[InvoiceLine, ...], now: datetime) -> Invoice:
    require(invoice, Action.EDIT)
    return touch(invoice, now, lines=lines)


def finalized(
    invoice: Invoice, *, number: str, credit_balance_minor: int, now: datetime, due_time: datetime
) -> Invoice:
    """The invoice numbered and frozen, with as much of the credit balance as it can take. One whose
    amount due is then 0 is paid at once (a credit note or a negative total leaves nothing to pay)."""
    require(invoice, Action.FINALIZE)
    credits = min(max(credit_balance_minor, 0), max(invoice.total_minor, 0))
    opened = touch(
        invoice,
        now,
        grace_until=None,
        number=number,
        status=InvoiceStatus.OPEN,
        credits_applied_minor=credits,
        finalize_time=now,
        due_time=due_time,
    )
    if opened.amount_due_minor == 0:
        return replace(opened, status=InvoiceStatus.PAID, paid_time=now)
    return opened


def balance_change_at_finalize(invoice: Invoice) -> int:
    """What finalizing does to the account's credit balance: the credit it took (negative), or the
    credit a negative total leaves the customer (positive)."""
    return -invoice.credits_applied_minor if invoice.total_minor >= 0 else -invoice.total_minor


def voided(invoice: Invoice, now: datetime) -> Invoice:
    require(invoice, Action.VOID)
    if invoice.amount_paid_minor:
        raise FailedPrecondition(
            "cannot void an invoice that is partly paid: refund the payment first",
            reason="INVOICE_PARTLY_PAID",
            metadata={"id": invoice.id, "amount_paid_minor": str(invoice.amount_paid_minor)},
        )
    if invoice.amount_credited_minor:
        raise FailedPrecondition(
            "cannot void an invoice that has credit notes",
            reason="INVOICE_HAS_CREDIT_NOTES",
            metadata={"id": invoice.id, "amount_credited_minor": str(invoice.amount_credited_minor)},
        )
    return touch(invoice, now, status=InvoiceStatus.VOID, void_time=now, grace_until=None)


def uncollectible(invoice: Invoice, now: datetime) -> Invoice:
    require(invoice, Action.MARK_UNCOLLECTIBLE)
    return touch(invoice, now, status=InvoiceStatus.UNCOLLECTIBLE)


def paid(invoice: Invoice, amount_minor: int, now: datetime) -> Invoice:
    """The invoice with `amount_minor` more paid; paid in full when nothing remains."""
    require(invoice, Action.PAY)
    if not 0 < amount_minor <= invoice.amount_remaining_minor:
        raise FailedPrecondition(
            f"a payment must be between 1 and the {invoice.amount_remaining_minor} minor units remaining",
            reason="PAYMENT_EXCEEDS_REMAINING",
            metadata={"id": invoice.id, "amount_remaining_minor": str(invoice.amount_remaining_minor)},
        )
    done = invoice.amount_paid_minor + amount_minor
    if done == invoice.amount_due_minor:
        return touch(invoice, now, amount_paid_minor=done, status=InvoiceStatus.PAID, paid_time=now)
    return touch(invoice, now, amount_paid_minor=done)


def number_text(prefix: str, value: int) -> str:
    return f"{prefix}-{value:06d}"

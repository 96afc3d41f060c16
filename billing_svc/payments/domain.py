"""Payments as the business sees them: a payment, its attempts at the gateway, its refunds. No I/O.

A payment is PENDING from the moment its intent is committed until an attempt settles it:
SUCCEEDED (charged) or FAILED (declined, or every attempt certainly failed). Each attempt is one
charge sent to the gateway under the attempt's id as idempotency key. An attempt's status says
what is known of it: in_flight (sent, no answer recorded), succeeded, declined, failed (certainly
not charged), unknown (no answer: maybe charged) or pending (accepted, not final at the gateway);
the last three are left to the reconciler.

Refunds hold their amount against the payment while pending, so two refunds racing can never give
back more than was charged: refundable = amount - succeeded refunds - pending refunds. A pending
refund is settled by its gateway's answer, or by the reconciler's lookup; a failed one holds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.errors import FailedPrecondition, NotFound
from core.text import excerpt

RESOURCE_TYPE = "payment"
ID_PREFIX = "pay"
ATTEMPT_ID_PREFIX = "pat"
REFUND_ID_PREFIX = "prf"
SETTINGS_RESOURCE_TYPE = "payment_settings"
MAX_DESCRIPTION = 500
MAX_REASON = 500
MAX_PAYMENT_METHOD = 255
MAX_GATEWAY = 32
MAX_MESSAGE = 500
MAX_METADATA = 20
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500


class PaymentStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AttemptStatus(StrEnum):
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"
    UNKNOWN = "unknown"
    PENDING = "pending"


UNSETTLED = frozenset({AttemptStatus.IN_FLIGHT, AttemptStatus.UNKNOWN, AttemptStatus.PENDING})


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class Attempt:
    id: str
    status: AttemptStatus
    create_time: datetime
    decline_code: str = ""
    message: str = ""
    reference: str = ""  # the gateway's id of the charge
    finish_time: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "create_time": self.create_time.isoformat(),
            "decline_code": self.decline_code,
            "message": self.message,
            "reference": self.reference,
            "finish_time": _time(self.finish_time),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            id=data["id"],
            status=AttemptStatus(data["status"]),
            create_time=datetime.fromisoformat(data["create_time"]),
            decline_code=data["decline_code"],
            message=data["message"],
            reference=data["reference"],
            finish_time=_parse(data["finish_time"]),
        )


@dataclass(frozen=True)
class Refund:
    id: str
    amount_minor: int
    status: RefundStatus
    reason: str
    create_time: datetime
    reference: str = ""
    message: str = ""
    credit_note_id: str = ""  # the credit note that made it (refund method PAYMENT_REFUND), else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "amount_minor": self.amount_minor,
            "status": self.status.value,
            "reason": self.reason,
            "create_time": self.create_time.isoformat(),
            "reference": self.reference,
            "message": self.message,
            "credit_note_id": self.credit_note_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Refund:
        return cls(
            id=data["id"],
            amount_minor=int(data["amount_minor"]),
            status=RefundStatus(data["status"]),
            reason=data["reason"],
            create_time=datetime.fromisoformat(data["create_time"]),
            reference=data["reference"],
            message=data["message"],
            credit_note_id=data.get("credit_note_id", ""),  # responses stored before credit notes refunded
        )


@dataclass(frozen=True)
class Payment:
    id: str
    account_id: str
    invoice_id: str  # "" when none
    currency_code: str
    amount_minor: int
    status: PaymentStatus
    gateway: str
    payment_method: str
    description: str
    create_time: datetime
    update_time: datetime
    failure_code: str = ""
    failure_message: str = ""
    attempts: tuple[Attempt, ...] = ()
    refunds: tuple[Refund, ...] = ()

    @property
    def amount_refunded_minor(self) -> int:
        return sum(r.amount_minor for r in self.refunds if r.status is RefundStatus.SUCCEEDED)

    @property
    def refundable_minor(self) -> int:
        """What a new refund may still give back: pending refunds hold their amount."""
        if self.status is not PaymentStatus.SUCCEEDED:
            return 0
        held = sum(r.amount_minor for r in self.refunds if r.status is not RefundStatus.FAILED)
        return self.amount_minor - held

    @property
    def charge_reference(self) -> str:
        """The gateway's id of the charge (what a refund refunds); "" until an attempt succeeded."""
        return next((a.reference for a in self.attempts if a.status is AttemptStatus.SUCCEEDED), "")

    def attempt(self, attempt_id: str) -> Attempt | None:
        return next((a for a in self.attempts if a.id == attempt_id), None)

    def refund(self, refund_id: str) -> Refund | None:
        return next((r for r in self.refunds if r.id == refund_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "invoice_id": self.invoice_id,
            "currency_code": self.currency_code,
            "amount_minor": self.amount_minor,
            "status": self.status.value,
            "gateway": self.gateway,
            "payment_method": self.payment_method,
            "description": self.description,
            "create_time": self.create_time.isoformat(),
            "update_time": self.update_time.isoformat(),
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "attempts": [a.to_dict() for a in self.attempts],
            "refunds": [r.to_dict() for r in self.refunds],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Payment:
        return cls(
            id=data["id"],
            account_id=data["account_id"],
            invoice_id=data["invoice_id"],
            currency_code=data["currency_code"],
            amount_minor=int(data["amount_minor"]),
            status=PaymentStatus(data["status"]),
            gateway=data["gateway"],
            payment_method=data["payment_method"],
            description=data["description"],
            create_time=datetime.fromisoformat(data["create_time"]),
            update_time=datetime.fromisoformat(data["update_time"]),
            failure_code=data["failure_code"],
            failure_message=data["failure_message"],
            attempts=tuple(Attempt.from_dict(a) for a in data["attempts"]),
            refunds=tuple(Refund.from_dict(r) for r in data["refunds"]),
        )


@dataclass(frozen=True)
class PaymentSettings:
    account_id: str
    gateway: str = ""
    default_payment_method: str = ""
    update_time: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "gateway": self.gateway,
            "default_payment_method": self.default_payment_method,
            "update_time": _time(self.update_time),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PaymentSettings:
        return cls(
            account_id=data["account_id"],
            gateway=data["gateway"],
            default_payment_method=data["default_payment_method"],
            update_time=_parse(data["update_time"]),
        )


def payment_not_found(payment_id: str) -> NotFound:
    return NotFound(
        f"payment {excerpt(payment_id)!r} not found",
        reason="PAYMENT_NOT_FOUND",
        metadata={"id": excerpt(payment_id)},
    )


def with_attempt(payment: Payment, attempt: Attempt, now: datetime) -> Payment:
    """The payment with `attempt` added, or replacing the attempt of the same id."""
    kept = tuple(a for a in payment.attempts if a.id != attempt.id)
    if len(kept) == len(payment.attempts):
        return replace(payment, attempts=(*kept, attempt), update_time=now)
    attempts = tuple(attempt if a.id == attempt.id else a for a in payment.attempts)
    return replace(payment, attempts=attempts, update_time=now)


def with_refund(payment: Payment, refund: Refund, now: datetime) -> Payment:
    kept = tuple(r for r in payment.refunds if r.id != refund.id)
    if len(kept) == len(payment.refunds):
        return replace(payment, refunds=(*kept, refund), update_time=now)
    refunds = tuple(refund if r.id == refund.id else r for r in payment.refunds)
    return replace(payment, refunds=refunds, update_time=now)


def succeeded(payment: Payment, now: datetime) -> Payment:
    return replace(
        payment, status=PaymentStatus.SUCCEEDED, failure_code="", failure_message="", update_time=now
    )


def failed(payment: Payment, code: str, message: str, now: datetime) -> Payment:
    return replace(
        payment,
        status=PaymentStatus.FAILED,
        failure_code=code,
        failure_message=message[:MAX_MESSAGE],
        update_time=now,
    )


def require_refundable(payment: Payment, amount_minor: int) -> None:
    if payment.status is not PaymentStatus.SUCCEEDED:
        raise FailedPrecondition(
            f"cannot refund a payment that is {payment.status.value}",
            reason="INVALID_STATE",
            metadata={"id": payment.id, "status": payment.status.value, "action": "refund"},
        )
    if not 0 < amount_minor <= payment.refundable_minor:
        raise FailedPrecondition(
            f"a refund must be between 1 and the {payment.refundable_minor} minor units still refundable",
            reason="REFUND_EXCEEDS_PAYMENT",
            metadata={"id": payment.id, "refundable_minor": str(payment.refundable_minor)},
        )

"""The port every payment gateway adapter implements.

Adapters never raise for a gateway outcome (a decline, an outage, a timeout): they return a
result saying what is known. Only programming errors raise (GatewayMisuse).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class ChargeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    # Accepted, not final (Stripe's requires_action, processing): settle later by lookup.
    PENDING = "pending"
    # Certainly not charged and worth retrying (refused connection, 5xx before work, rate limit).
    FAILED = "failed"
    # May or may not have been charged (a timeout after sending): retry with the SAME key or look
    # it up; never a new key.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ChargeRequest:
    idempotency_key: str
    amount_minor: int
    currency_code: str
    payment_method: str  # a gateway token, never a card number
    description: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChargeResult:
    status: ChargeStatus
    reference: str | None  # the gateway's id of the charge, when it has one
    decline_code: str | None
    message: str


class RefundStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PENDING = "pending"
    DECLINED = "declined"  # refused for good: more than remains, an unknown charge
    FAILED = "failed"  # certainly not refunded; worth retrying
    UNKNOWN = "unknown"  # may have been refunded: retry with the SAME key


@dataclass(frozen=True)
class RefundRequest:
    idempotency_key: str
    charge_reference: str
    amount_minor: int
    currency_code: str


@dataclass(frozen=True)
class RefundResult:
    status: RefundStatus
    reference: str | None
    message: str


class GatewayMisuse(Exception):
    """A programming error on our side, such as an idempotency key reused with another request."""


class PaymentGateway(Protocol):
    name: str

    async def charge(self, request: ChargeRequest) -> ChargeResult: ...

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        """The charge made under this key, or None when the gateway never saw it."""
        ...

    async def refund(self, request: RefundRequest) -> RefundResult: ...

    async def lookup_refund(self, idempotency_key: str, *, charge_reference: str) -> RefundResult | None:
        """The refund made under this key (of the charge `charge_reference`, the gateway's id of the
        charge refunded), or None when the gateway never saw it. UNKNOWN when asking failed."""
        ...

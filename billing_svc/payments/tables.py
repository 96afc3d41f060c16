"""Payments, their attempts at the gateway, their refunds, and the accounts' payment settings.

Keys lead with account_id where a row belongs to one account's listings. An attempt is claimable
work (core.claims): `due_time` is when the reconciler should look it up if it is still unsettled
(in_flight, unknown, pending), NULL once its outcome is recorded. So is a refund: `due_time` while
it is pending, NULL once it succeeded or failed; a credit note's refund names it (`credit_note_id`).
A gateway's events received by webhook are kept by their id (gateway_events), so a redelivered one
is recognised and changes nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from billing_svc.payments.domain import (
    MAX_DESCRIPTION,
    MAX_GATEWAY,
    MAX_MESSAGE,
    MAX_PAYMENT_METHOD,
    MAX_REASON,
)
from core import ids
from core.claims import Claimable
from core.db import Base, UtcDateTime

MAX_CODE = 64


class PaymentRow(Base):
    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    invoice_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))  # "" when none
    currency_code: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    gateway: Mapped[str] = mapped_column(String(MAX_GATEWAY))
    payment_method: Mapped[str] = mapped_column(String(MAX_PAYMENT_METHOD))
    description: Mapped[str] = mapped_column(String(MAX_DESCRIPTION))
    failure_code: Mapped[str] = mapped_column(String(MAX_CODE))
    failure_message: Mapped[str] = mapped_column(String(MAX_MESSAGE))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_payments_account_id_create_time_id", "account_id", "create_time", "id"),
        Index("ix_payments_invoice_id_create_time_id", "invoice_id", "create_time", "id"),
    )


class PaymentAttemptRow(Claimable, Base):
    __tablename__ = "payment_attempts"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), index=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    decline_code: Mapped[str] = mapped_column(String(MAX_CODE))
    message: Mapped[str] = mapped_column(String(MAX_MESSAGE))
    reference: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    finish_time: Mapped[datetime | None] = mapped_column(UtcDateTime)


class PaymentRefundRow(Claimable, Base):
    __tablename__ = "payment_refunds"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), index=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    position: Mapped[int] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(MAX_REASON))
    reference: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(String(MAX_MESSAGE))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    # The credit note that made it (refund method PAYMENT_REFUND); NULL for RefundPayment's. Unique
    # with the payment: a credit note refunds each payment once at most.
    credit_note_id: Mapped[str | None] = mapped_column(String(ids.MAX_LENGTH))

    __table_args__ = (
        Index("ux_payment_refunds_payment_id_credit_note_id", "payment_id", "credit_note_id", unique=True),
    )


class PaymentSettingsRow(Base):
    __tablename__ = "payment_settings"

    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    gateway: Mapped[str] = mapped_column(String(MAX_GATEWAY))
    default_payment_method: Mapped[str] = mapped_column(String(MAX_PAYMENT_METHOD))
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class GatewayEventRow(Base):
    """An event a gateway sent (a webhook), recorded in the transaction that acted on it."""

    __tablename__ = "gateway_events"

    gateway: Mapped[str] = mapped_column(String(MAX_GATEWAY), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the gateway's own id (evt_...)
    received_time: Mapped[datetime] = mapped_column(UtcDateTime)
    outcome: Mapped[str] = mapped_column(String(16))  # processed, ignored

"""The subscriptions' tables: subscriptions, their phases, and pending invoice items.

Every key leads with (or is indexed by) account_id, so the schema can be distributed by account.
A subscription is claimable work (core.claims): `due_time` is its next boundary (trial end or
period end), when a renewal, scheduled change or cancellation falls due; NULL once canceled.
Subscriptions of accounts on a test clock carry `test_clock_id`: the worker leaves them alone,
and AdvanceTestClock runs their work instead.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Date, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core import ids
from core.claims import Claimable
from core.db import Base, UtcDateTime

MAX_TIME_ZONE = 64
MAX_FEE_CODE = 80
MAX_DESCRIPTION = 300
MAX_QUANTITY_TEXT = 48  # a Decimal in plain notation


class SubscriptionRow(Claimable, Base):
    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    test_clock_id: Mapped[str | None] = mapped_column(String(ids.MAX_LENGTH), index=True)
    plan_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    plan_version: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    billing_time_zone: Mapped[str] = mapped_column(String(MAX_TIME_ZONE))
    anchor_date: Mapped[date] = mapped_column(Date)  # local date every boundary keeps the day of
    start_time: Mapped[datetime] = mapped_column(UtcDateTime)
    trial_end_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    period_index: Mapped[int] = mapped_column(Integer)  # of the current period in the cycle
    current_period_start: Mapped[datetime] = mapped_column(UtcDateTime)
    current_period_end: Mapped[datetime] = mapped_column(UtcDateTime)
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean)
    cancel_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    pause_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    scheduled_plan_id: Mapped[str | None] = mapped_column(String(ids.MAX_LENGTH))
    scheduled_plan_version: Mapped[int | None] = mapped_column(Integer)
    scheduled_quantity: Mapped[int | None] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    revision: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_subscriptions_account_id_create_time_id", "account_id", "create_time", "id"),
        Index("ix_subscriptions_create_time_id", "create_time", "id"),
        Index("ix_subscriptions_plan_id_plan_version", "plan_id", "plan_version"),
    )


class SubscriptionPhaseRow(Base):
    """What applied when: one row per stretch of time on one plan version, quantity and state.

    Invoicing in arrears prices each period's usage by the phases that overlap it.
    """

    __tablename__ = "subscription_phases"

    subscription_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    start_time: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime)  # NULL for the open phase
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), index=True)
    plan_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    plan_version: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))


class PendingInvoiceItemRow(Base):
    __tablename__ = "pending_invoice_items"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    subscription_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    fee_code: Mapped[str] = mapped_column(String(MAX_FEE_CODE))
    description: Mapped[str] = mapped_column(String(MAX_DESCRIPTION))
    currency_code: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[str] = mapped_column(String(MAX_QUANTITY_TEXT))  # exact Decimal text
    period_start: Mapped[datetime] = mapped_column(UtcDateTime)
    period_end: Mapped[datetime] = mapped_column(UtcDateTime)
    plan_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    plan_version: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    invoice_id: Mapped[str | None] = mapped_column(String(ids.MAX_LENGTH))  # set by invoicing
    details: Mapped[dict[str, Any]] = mapped_column(JSON)  # the exact fraction, the full-period amount

    __table_args__ = (
        Index("ix_pending_invoice_items_account_id_create_time_id", "account_id", "create_time", "id"),
    )

"""Invoices, their lines, the number sequences, and the accounts' credit balances.

Keys lead with account_id where a row belongs to one account, so the schema can be distributed by
account. `cycle_key` is "<subscription id>/<period start>" on a subscription's cycle invoice and
NULL otherwise: its uniqueness makes a second invoice for the same subscription period impossible,
even when two workers race. `number` is unique and NULL on drafts.

A draft cycle invoice in its grace period is claimable work (core.claims, with the columns named
`finalize_*`, since `due_time` is the payment's): `finalize_due_time` is when its grace ends and
the billing worker (or the test clock's advance) finalizes it; NULL once it is not a draft. The
`usage_*` columns are its usage basis (billing_svc.invoices.domain.UsageBasis), NULL without one.
Automatic collection (billing_svc/collection.py): `next_collection_time` is when the collection
worker (or a test clock's advance) next charges the invoice, NULL when nobody will;
`collection_attempts` counts the declined charges; `collection_claimed_by` and
`collection_lease_until` are the core.claims columns of the worker holding it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from billing_svc.invoices.credit_notes import MAX_MEMO
from billing_svc.invoices.domain import MAX_DESCRIPTION, MAX_LINE_DESCRIPTION
from core import ids
from core.claims import MAX_WORKER_ID
from core.db import Base, UtcDateTime

MAX_NUMBER = 40
MAX_DECIMAL_TEXT = 48  # a Decimal in plain notation
MAX_CYCLE_KEY = 2 * ids.MAX_LENGTH + 40


class InvoiceRow(Base):
    __tablename__ = "invoices"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    subscription_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))  # "" when none
    cycle_key: Mapped[str | None] = mapped_column(String(MAX_CYCLE_KEY), unique=True)
    number: Mapped[str | None] = mapped_column(String(MAX_NUMBER), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(24))
    currency_code: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime | None] = mapped_column(UtcDateTime)
    period_end: Mapped[datetime | None] = mapped_column(UtcDateTime)
    description: Mapped[str] = mapped_column(String(MAX_DESCRIPTION))
    subtotal_minor: Mapped[int] = mapped_column(BigInteger)  # = the sum of the lines (checked by a test)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    credits_applied_minor: Mapped[int] = mapped_column(BigInteger)
    amount_paid_minor: Mapped[int] = mapped_column(BigInteger)
    credited_pre_payment_minor: Mapped[int] = mapped_column(BigInteger, server_default="0")
    credited_post_payment_minor: Mapped[int] = mapped_column(BigInteger, server_default="0")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    finalize_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    due_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    paid_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    void_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revision: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    usage_plan_id: Mapped[str | None] = mapped_column(String(ids.MAX_LENGTH))
    usage_plan_version: Mapped[int | None] = mapped_column(Integer)
    usage_period_start: Mapped[datetime | None] = mapped_column(UtcDateTime)
    usage_period_end: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finalize_due_time: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    finalize_claimed_by: Mapped[str | None] = mapped_column(String(MAX_WORKER_ID))
    finalize_lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    collection_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_collection_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    collection_claimed_by: Mapped[str | None] = mapped_column(String(MAX_WORKER_ID))
    collection_lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_invoices_account_id_create_time_id", "account_id", "create_time", "id"),
        Index("ix_invoices_next_collection_time", "next_collection_time"),
    )


class InvoiceLineRow(Base):
    __tablename__ = "invoice_lines"

    invoice_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), unique=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    kind: Mapped[str] = mapped_column(String(24))
    description: Mapped[str] = mapped_column(String(MAX_LINE_DESCRIPTION))
    quantity: Mapped[str] = mapped_column(String(MAX_DECIMAL_TEXT))  # exact Decimal text
    unit_price: Mapped[str | None] = mapped_column(String(MAX_DECIMAL_TEXT))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[datetime | None] = mapped_column(UtcDateTime)
    period_end: Mapped[datetime | None] = mapped_column(UtcDateTime)
    subscription_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    pending_item_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    meter_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    tiers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # decimal strings, never JSON numbers


class InvoiceNumberSequenceRow(Base):
    """The next number of each sequence. Finalizing takes it under the row's lock, in the
    finalizing transaction: a rollback gives the number back, so numbers have no gaps."""

    __tablename__ = "invoice_number_sequences"

    prefix: Mapped[str] = mapped_column(String(MAX_NUMBER), primary_key=True)
    next_value: Mapped[int] = mapped_column(BigInteger)


class CreditBalanceRow(Base):
    """What an account is owed, per currency: credit the next invoices take at finalization."""

    __tablename__ = "credit_balances"

    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    currency_code: Mapped[str] = mapped_column(String(3), primary_key=True)
    balance_minor: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class CreditBalanceEntryRow(Base):
    """Every change of a credit balance, with the document that made it: the balance's history."""

    __tablename__ = "credit_balance_entries"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    currency_code: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)  # positive: credit given; negative: used
    balance_after_minor: Mapped[int] = mapped_column(BigInteger)
    source_type: Mapped[str] = mapped_column(String(24))
    source_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_credit_balance_entries_account_id_create_time_id", "account_id", "create_time", "id"),
    )


class CreditNoteRow(Base):
    """A credit note of an invoice; `total_minor` = the sum of its line rows (checked by a test)."""

    __tablename__ = "credit_notes"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    invoice_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    number: Mapped[str] = mapped_column(String(MAX_NUMBER), unique=True)
    currency_code: Mapped[str] = mapped_column(String(3))
    total_minor: Mapped[int] = mapped_column(BigInteger)
    pre_payment_minor: Mapped[int] = mapped_column(BigInteger)
    post_payment_minor: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(24))
    refund_method: Mapped[str] = mapped_column(String(24))
    memo: Mapped[str] = mapped_column(String(MAX_MEMO))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    # The payment refunds a PAYMENT_REFUND credit note made (payment_refunds.credit_note_id says the
    # same from the other side); [] otherwise.
    refund_ids: Mapped[list[str]] = mapped_column(JSON, default=list)

    __table_args__ = (
        Index("ix_credit_notes_account_id_create_time_id", "account_id", "create_time", "id"),
        Index("ix_credit_notes_invoice_id_create_time_id", "invoice_id", "create_time", "id"),
    )


class CreditNoteLineRow(Base):
    __tablename__ = "credit_note_lines"

    credit_note_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), unique=True)
    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    description: Mapped[str] = mapped_column(String(MAX_LINE_DESCRIPTION))
    amount_minor: Mapped[int] = mapped_column(BigInteger)

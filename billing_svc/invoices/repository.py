"""Invoices and credit balances on SQL. Repositories never commit."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    Text,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.invoices.credit_notes import CreditNote, CreditNoteLine, CreditNoteReason, RefundMethod
from billing_svc.invoices.domain import (
    Invoice,
    InvoiceLine,
    InvoiceReason,
    InvoiceStatus,
    LineKind,
    LineTier,
    TimeRange,
    UsageBasis,
    number_text,
)
from billing_svc.invoices.ports import InvoicedPeriod
from billing_svc.invoices.tables import (
    CreditBalanceEntryRow,
    CreditBalanceRow,
    CreditNoteLineRow,
    CreditNoteRow,
    InvoiceLineRow,
    InvoiceNumberSequenceRow,
    InvoiceRow,
)
from billing_svc.subscriptions.domain import PendingItem
from billing_svc.subscriptions.repository import pending_item_from_row
from billing_svc.subscriptions.tables import PendingInvoiceItemRow
from core import ids
from core.db import UtcDateTime, add_all_rows, insert_row, upsert_into
from core.pagination import keyset_after


def _invoice_values(invoice: Invoice) -> dict[str, Any]:
    return {
        "account_id": invoice.account_id,
        "subscription_id": invoice.subscription_id,
        "number": invoice.number or None,
        "status": invoice.status.value,
        "reason": invoice.reason.value,
        "currency_code": invoice.currency_code,
        "period_start": invoice.period_start,
        "period_end": invoice.period_end,
        "description": invoice.description,
        "subtotal_minor": invoice.subtotal_minor,
        "total_minor": invoice.total_minor,
        "credits_applied_minor": invoice.credits_applied_minor,
        "amount_paid_minor": invoice.amount_paid_minor,
        "credited_pre_payment_minor": invoice.credited_pre_payment_minor,
        "credited_post_payment_minor": invoice.credited_post_payment_minor,
        "create_time": invoice.create_time,
        "update_time": invoice.update_time,
        "finalize_time": invoice.finalize_time,
        "due_time": invoice.due_time,
        "paid_time": invoice.paid_time,
        "void_time": invoice.void_time,
        "revision": invoice.revision,
        "metadata_": dict(invoice.metadata),
        **_basis_values(invoice.usage_basis),
        "finalize_due_time": invoice.grace_until if invoice.status is InvoiceStatus.DRAFT else None,
    }


def _basis_values(basis: UsageBasis | None) -> dict[str, Any]:
    return {
        "usage_plan_id": basis.plan_id if basis else None,
        "usage_plan_version": basis.plan_version if basis else None,
        "usage_period_start": basis.period_start if basis else None,
        "usage_period_end": basis.period_end if basis else None,
    }


def _basis(row: InvoiceRow) -> UsageBasis | None:
    if row.usage_plan_id is None or row.usage_plan_version is None:
        return None
    assert row.usage_period_start is not None
    assert row.usage_period_end is not None
    return UsageBasis(row.usage_plan_id, row.usage_plan_version, row.usage_period_start, row.usage_period_end)


def _line_rows(invoice: Invoice) -> list[dict[str, Any]]:
    return [
        {
            "invoice_id": invoice.id,
            "position": position,
            "id": line.id,
            "account_id": invoice.account_id,
            "kind": line.kind.value,
            "description": line.description,
            "quantity": format(line.quantity, "f"),
            "unit_price": None if line.unit_price is None else format(line.unit_price, "f"),
            "amount_minor": line.amount_minor,
            "period_start": line.period_start,
            "period_end": line.period_end,
            "subscription_id": line.subscription_id,
            "pending_item_id": line.pending_item_id,
            "meter_id": line.meter_id,
            "tiers": [tier.to_dict() for tier in line.tiers],
        }
        for position, line in enumerate(invoice.lines)
    ]


def _line(row: InvoiceLineRow) -> InvoiceLine:
    return InvoiceLine(
        id=row.id,
        kind=LineKind(row.kind),
        description=row.description,
        quantity=Decimal(row.quantity),
        unit_price=None if row.unit_price is None else Decimal(row.unit_price),
        amount_minor=row.amount_minor,
        period_start=row.period_start,
        period_end=row.period_end,
        subscription_id=row.subscription_id,
        pending_item_id=row.pending_item_id,
        meter_id=row.meter_id,
        tiers=tuple(LineTier.from_dict(tier) for tier in row.tiers),
    )


def _invoice(row: InvoiceRow, lines: Sequence[InvoiceLine]) -> Invoice:
    return Invoice(
        id=row.id,
        account_id=row.account_id,
        subscription_id=row.subscription_id,
        number=row.number or "",
        status=InvoiceStatus(row.status),
        reason=InvoiceReason(row.reason),
        currency_code=row.currency_code,
        period_start=row.period_start,
        period_end=row.period_end,
        lines=tuple(lines),
        description=row.description,
        create_time=row.create_time,
        update_time=row.update_time,
        credits_applied_minor=row.credits_applied_minor,
        amount_paid_minor=row.amount_paid_minor,
        credited_pre_payment_minor=row.credited_pre_payment_minor,
        credited_post_payment_minor=row.credited_post_payment_minor,
        finalize_time=row.finalize_time,
        due_time=row.due_time,
        paid_time=row.paid_time,
        void_time=row.void_time,
        revision=row.revision,
        metadata=dict(row.metadata_),
        usage_basis=_basis(row),
        grace_until=row.finalize_due_time if row.status == InvoiceStatus.DRAFT.value else None,
    )


class SqlInvoiceRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def _lines_of(self, invoice_ids: Sequence[str]) -> dict[str, list[InvoiceLine]]:
        found: dict[str, list[InvoiceLine]] = {invoice_id: [] for invoice_id in invoice_ids}
        if not invoice_ids:
            return found
        statement = (
            select(InvoiceLineRow)
            .where(InvoiceLineRow.invoice_id.in_(invoice_ids))
            .order_by(InvoiceLineRow.invoice_id, InvoiceLineRow.position)
        )
        for row in (await self._session.scalars(statement)).all():
            found[row.invoice_id].append(_line(row))
        return found

    async def get(self, invoice_id: str, *, for_update: bool = False) -> Invoice | None:
        row = await self._session.get(InvoiceRow, invoice_id, with_for_update=for_update)
        if row is None:
            return None
        return _invoice(row, (await self._lines_of([row.id]))[row.id])

    async def add(
        self, invoice: Invoice, *, cycle_key: str | None = None, collect_from: datetime | None = None
    ) -> None:
        values = _invoice_values(invoice)
        if collect_from is not None:
            values["next_collection_time"] = collect_from
        await insert_row(self._session, InvoiceRow, {"id": invoice.id, "cycle_key": cycle_key, **values})
        await add_all_rows(self._session, InvoiceLineRow, _line_rows(invoice))

    async def save(
        self, invoice: Invoice, *, lines_changed: bool = False, collect_from: datetime | None = None
    ) -> None:
        values = _invoice_values(invoice)
        if collect_from is not None:
            values["next_collection_time"] = collect_from
        elif invoice.status is InvoiceStatus.PAID:
            # Paid by any path: no more charges. One that was declined before (its subscription may be
            # past due or unpaid) is due once more, at its paid time, so that the collection worker
            # (or the test clock's advance) restores the subscription (billing_svc/collection.py).
            values["next_collection_time"] = case(
                (InvoiceRow.collection_attempts > 0, literal(invoice.paid_time, UtcDateTime())), else_=None
            )
        elif invoice.status is not InvoiceStatus.OPEN:
            # Void, uncollectible: nothing more to collect, and no worker's claim stands. A worker
            # charging it meanwhile finds its claim gone and records nothing (the void recorded all).
            values.update(next_collection_time=None, collection_claimed_by=None, collection_lease_until=None)
        await self._session.execute(update(InvoiceRow).where(InvoiceRow.id == invoice.id).values(**values))
        if lines_changed:  # only a draft's lines change: rewritten whole, in their new order
            await self._session.execute(delete(InvoiceLineRow).where(InvoiceLineRow.invoice_id == invoice.id))
            await add_all_rows(self._session, InvoiceLineRow, _line_rows(invoice))

    async def list_for_account(
        self,
        *,
        account_id: str,
        statuses: Sequence[InvoiceStatus],
        subscription_id: str,
        created: TimeRange,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Invoice]:
        statement = select(InvoiceRow).where(InvoiceRow.account_id == account_id)
        if statuses:
            statement = statement.where(InvoiceRow.status.in_([status.value for status in statuses]))
        if subscription_id:
            statement = statement.where(InvoiceRow.subscription_id == subscription_id)
        if created.start is not None:
            statement = statement.where(InvoiceRow.create_time >= created.start)
        if created.end is not None:
            statement = statement.where(InvoiceRow.create_time < created.end)
        statement = keyset_after(statement, InvoiceRow.create_time, InvoiceRow.id, after, descending=True)
        rows = (await self._session.scalars(statement.limit(limit))).all()
        lines = await self._lines_of([row.id for row in rows])
        return [_invoice(row, lines[row.id]) for row in rows]

    async def take_pending_items(
        self,
        account_id: str,
        invoice_id: str,
        *,
        before: datetime,
        limit: int,
        subscription_id: str | None = None,
    ) -> list[PendingItem]:
        parameters = {
            "p_account_id": account_id,
            "p_before": before,
            "p_limit": limit,
            "p_invoice_id": invoice_id,
        }
        if subscription_id is not None:
            parameters["p_subscription_id"] = subscription_id
        rows = (await self._session.execute(_take_items(subscription_id is not None), parameters)).all()
        return sorted(
            (pending_item_from_row(row) for row in rows), key=lambda item: (item.create_time, item.id)
        )

    async def cycle_invoice_exists(self, cycle_key: str) -> bool:
        found = await self._session.scalar(_CYCLE_INVOICE, {"cycle_key": cycle_key})
        return found is not None

    async def period_invoices(self, account_id: str, start: datetime, end: datetime) -> list[InvoicedPeriod]:
        statement = select(
            InvoiceRow.id, InvoiceRow.period_start, InvoiceRow.period_end, InvoiceRow.create_time
        ).where(
            InvoiceRow.account_id == account_id,
            InvoiceRow.reason == InvoiceReason.PERIOD.value,
            InvoiceRow.status != InvoiceStatus.VOID.value,
            InvoiceRow.period_start < end,
            InvoiceRow.period_end > start,
        )
        found = [
            InvoicedPeriod(invoice_id, low, high, created)
            for invoice_id, low, high, created in (await self._session.execute(statement)).all()
            if low is not None and high is not None
        ]
        return sorted(found, key=lambda period: (period.start, period.end, period.invoice_id))

    async def release_pending_items(self, invoice_id: str, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        items = PendingInvoiceItemRow
        await self._session.execute(
            update(items)
            .where(items.invoice_id == invoice_id, items.id.in_(item_ids))
            .values(invoice_id=None)
        )

    async def number_invoice(self, invoice_id: str, prefix: str) -> str:
        parameters = {"p_id": invoice_id, "p_prefix": prefix}
        if self._session.get_bind().dialect.name == "postgresql":
            # One statement (`_number_invoice_postgres`): the sequence's row lock is taken by the
            # transaction's last statement before its audit rows, its events and COMMIT.
            return str((await self._session.execute(_number_invoice_postgres(), parameters)).scalar_one())
        number = number_text(prefix, await self.next_number(prefix))
        found = await self._session.execute(_SET_NUMBER, {**parameters, "p_number": number})
        if getattr(found, "rowcount", 0) != 1:
            raise LookupError(invoice_id)
        return number

    async def next_number(self, prefix: str) -> int:
        # One upsert: the first number of a new prefix is 1 (the row is made holding 2), every later
        # one the stored next value, which the same statement moves on under the row's lock.
        statement = _take_number(self._session.get_bind().dialect.name)
        return int((await self._session.execute(statement, {"p_prefix": prefix})).scalar_one())


@functools.cache
def _take_items(of_subscription: bool) -> Update:
    """`take_pending_items`' statement, built once for each variant. Parameters p_account_id,
    p_before, p_limit, p_invoice_id and, for one subscription's, p_subscription_id (a bind
    parameter may not share a column's name). The UPDATE re-checks `invoice_id IS NULL` on each
    row it locks, so an item a concurrent invoice took first is skipped rather than taken twice."""
    items = cast(Table, PendingInvoiceItemRow.__table__)
    wanted = [
        items.c.account_id == bindparam("p_account_id"),
        items.c.invoice_id.is_(None),
        items.c.period_start < bindparam("p_before"),
    ]
    if of_subscription:
        wanted.append(items.c.subscription_id == bindparam("p_subscription_id"))
    chosen = (
        select(items.c.id)
        .where(*wanted)
        .order_by(items.c.create_time, items.c.id)
        .limit(bindparam("p_limit", type_=Integer()))
    )
    return (
        update(items)
        .where(items.c.id.in_(chosen), items.c.invoice_id.is_(None))
        .values(invoice_id=bindparam("p_invoice_id"))
        .returning(*items.c)
    )


@functools.cache
def _take_number(dialect: str) -> Any:
    """`next_number`'s upsert in `dialect` (parameter p_prefix), built once."""
    sequence = cast(Table, InvoiceNumberSequenceRow.__table__)
    start = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(sequence)
    start = start.values(prefix=bindparam("p_prefix"), next_value=2)
    return start.on_conflict_do_update(
        index_elements=["prefix"], set_={"next_value": sequence.c.next_value + 1}
    ).returning(sequence.c.next_value - 1)


_INVOICES = cast(Table, InvoiceRow.__table__)
_SET_NUMBER = (
    update(_INVOICES).where(_INVOICES.c.id == bindparam("p_id")).values(number=bindparam("p_number"))
)


@functools.cache
def _number_invoice_postgres() -> Update:
    """`number_invoice` on PostgreSQL (parameters p_id, p_prefix), built once: the sequence's upsert
    as a data-modifying CTE, and the invoice's UPDATE setting the number's text from it, as
    billing_svc.invoices.domain.number_text spells it (the prefix, a dash, the value in at least six
    digits), RETURNING it. With no such invoice nothing is returned and the caller fails the
    transaction, so the number taken is given back."""
    sequence = cast(Table, InvoiceNumberSequenceRow.__table__)
    upsert = postgresql.insert(sequence).values(prefix=bindparam("p_prefix"), next_value=2)
    taken = (
        upsert.on_conflict_do_update(
            index_elements=["prefix"], set_={"next_value": sequence.c.next_value + 1}
        )
        .returning((sequence.c.next_value - 1).label("value"))
        .cte("taken_number")
    )
    digits = sql_cast(taken.c.value, Text)
    padded = case((taken.c.value < 1_000_000, func.lpad(digits, 6, "0")), else_=digits)
    text = bindparam("p_prefix", type_=String()) + literal("-", String()) + padded
    return (
        update(_INVOICES)
        .where(_INVOICES.c.id == bindparam("p_id"))
        .values(number=select(text).scalar_subquery())
        .returning(_INVOICES.c.number)
    )


_CYCLE_INVOICE = select(_INVOICES.c.id).where(_INVOICES.c.cycle_key == bindparam("cycle_key"))

_BALANCES = cast(Table, CreditBalanceRow.__table__)
_BALANCE = (
    select(_BALANCES.c.balance_minor)
    .where(
        _BALANCES.c.account_id == bindparam("account_id"),
        _BALANCES.c.currency_code == bindparam("currency_code"),
    )
    .with_for_update()
)


class SqlCreditBalances:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def balance(self, account_id: str, currency_code: str) -> int:
        parameters = {"account_id": account_id, "currency_code": currency_code}
        return int((await self._session.scalar(_BALANCE, parameters)) or 0)

    async def change(
        self,
        account_id: str,
        currency_code: str,
        amount_minor: int,
        *,
        source: tuple[str, str],
        now: datetime,
    ) -> int:
        balances = CreditBalanceRow
        upsert = upsert_into(self._session, balances).values(
            account_id=account_id, currency_code=currency_code, balance_minor=amount_minor, update_time=now
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=["account_id", "currency_code"],
            set_={"balance_minor": balances.balance_minor + amount_minor, "update_time": now},
        ).returning(balances.balance_minor)
        after = int((await self._session.execute(upsert)).scalar_one())
        source_type, source_id = source
        await self._session.execute(
            insert(CreditBalanceEntryRow).values(
                id=ids.new_id("cbe"),
                account_id=account_id,
                currency_code=currency_code,
                amount_minor=amount_minor,
                balance_after_minor=after,
                source_type=source_type,
                source_id=source_id,
                create_time=now,
            )
        )
        return after


class SqlCreditNoteRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add(self, note: CreditNote) -> None:
        await self._session.execute(
            insert(CreditNoteRow).values(
                id=note.id,
                account_id=note.account_id,
                invoice_id=note.invoice_id,
                number=note.number,
                currency_code=note.currency_code,
                total_minor=note.total_minor,
                pre_payment_minor=note.pre_payment_minor,
                post_payment_minor=note.post_payment_minor,
                reason=note.reason.value,
                refund_method=note.refund_method.value,
                memo=note.memo,
                create_time=note.create_time,
                refund_ids=list(note.refund_ids),
            )
        )
        rows = [
            {
                "credit_note_id": note.id,
                "position": position,
                "id": line.id,
                "account_id": note.account_id,
                "description": line.description,
                "amount_minor": line.amount_minor,
            }
            for position, line in enumerate(note.lines)
        ]
        await add_all_rows(self._session, CreditNoteLineRow, rows)

    async def get(self, credit_note_id: str) -> CreditNote | None:
        row = await self._session.get(CreditNoteRow, credit_note_id)
        if row is None:
            return None
        return (await self._with_lines([row]))[0]

    async def list_notes(
        self, *, account_id: str, invoice_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[CreditNote]:
        statement = select(CreditNoteRow)
        if account_id:
            statement = statement.where(CreditNoteRow.account_id == account_id)
        if invoice_id:
            statement = statement.where(CreditNoteRow.invoice_id == invoice_id)
        statement = keyset_after(
            statement, CreditNoteRow.create_time, CreditNoteRow.id, after, descending=True
        )
        return await self._with_lines((await self._session.scalars(statement.limit(limit))).all())

    async def _with_lines(self, rows: Sequence[CreditNoteRow]) -> list[CreditNote]:
        found: dict[str, list[CreditNoteLine]] = {row.id: [] for row in rows}
        if rows:
            statement = (
                select(CreditNoteLineRow)
                .where(CreditNoteLineRow.credit_note_id.in_(list(found)))
                .order_by(CreditNoteLineRow.credit_note_id, CreditNoteLineRow.position)
            )
            for line in (await self._session.scalars(statement)).all():
                found[line.credit_note_id].append(
                    CreditNoteLine(line.id, line.description, line.amount_minor)
                )
        return [
            CreditNote(
                id=row.id,
                number=row.number,
                invoice_id=row.invoice_id,
                account_id=row.account_id,
                currency_code=row.currency_code,
                lines=tuple(found[row.id]),
                reason=CreditNoteReason(row.reason),
                memo=row.memo,
                refund_method=RefundMethod(row.refund_method),
                pre_payment_minor=row.pre_payment_minor,
                create_time=row.create_time,
                refund_ids=tuple(row.refund_ids),
            )
            for row in rows
        ]


def count_mismatched_totals() -> Any:
    """A statement counting invoices whose stored total is not the sum of their line rows (the
    invariant tests/support.py `check_invoice_totals` checks after every test on PostgreSQL and SQLite)."""
    sums = (
        select(InvoiceLineRow.invoice_id, func.sum(InvoiceLineRow.amount_minor).label("amount"))
        .group_by(InvoiceLineRow.invoice_id)
        .subquery()
    )
    return (
        select(func.count())
        .select_from(InvoiceRow)
        .outerjoin(sums, sums.c.invoice_id == InvoiceRow.id)
        .where(
            (InvoiceRow.total_minor != func.coalesce(sums.c.amount, 0))
            | (InvoiceRow.subtotal_minor != InvoiceRow.total_minor)
        )
    )


def count_mismatched_credit_notes() -> Any:
    """A statement counting credit notes whose stored total is not the sum of their line rows or
    not the sum of its two parts, and invoices whose credited amounts are not the sum of their credit
    notes' parts or exceed their total (the invariant tests/support.py checks after every test)."""
    sums = (
        select(CreditNoteLineRow.credit_note_id, func.sum(CreditNoteLineRow.amount_minor).label("amount"))
        .group_by(CreditNoteLineRow.credit_note_id)
        .subquery()
    )
    notes = (
        select(func.count())
        .select_from(CreditNoteRow)
        .outerjoin(sums, sums.c.credit_note_id == CreditNoteRow.id)
        .where(
            (CreditNoteRow.total_minor != func.coalesce(sums.c.amount, 0))
            | (
                CreditNoteRow.total_minor
                != CreditNoteRow.pre_payment_minor + CreditNoteRow.post_payment_minor
            )
            | (CreditNoteRow.pre_payment_minor < 0)
            | (CreditNoteRow.post_payment_minor < 0)
        )
        .scalar_subquery()
    )
    parts = (
        select(
            CreditNoteRow.invoice_id,
            func.sum(CreditNoteRow.pre_payment_minor).label("pre"),
            func.sum(CreditNoteRow.post_payment_minor).label("post"),
        )
        .group_by(CreditNoteRow.invoice_id)
        .subquery()
    )
    invoices = (
        select(func.count())
        .select_from(InvoiceRow)
        .outerjoin(parts, parts.c.invoice_id == InvoiceRow.id)
        .where(
            (InvoiceRow.credited_pre_payment_minor != func.coalesce(parts.c.pre, 0))
            | (InvoiceRow.credited_post_payment_minor != func.coalesce(parts.c.post, 0))
            | (
                (InvoiceRow.credited_pre_payment_minor + InvoiceRow.credited_post_payment_minor > 0)
                & (
                    InvoiceRow.credited_pre_payment_minor + InvoiceRow.credited_post_payment_minor
                    > InvoiceRow.total_minor
                )
            )
        )
        .scalar_subquery()
    )
    return select(notes + invoices)

"""An invoice finalized at a boundary is numbered by the transaction's last write
(SqlInvoiceRepository.number_invoice: on PostgreSQL one statement that spells the number in SQL,
on SQLite the sequence's upsert and an UPDATE). Both must spell it as
billing_svc.invoices.domain.number_text does, past six digits too, and give the number back when
the transaction rolls back. And the repository's other database rule: one cycle invoice per
subscription and period start (`cycle_key`, unique)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_svc.invoices.cycle_use_cases import cycle_key
from billing_svc.invoices.domain import Invoice, InvoiceReason, InvoiceStatus, number_text
from billing_svc.invoices.repository import SqlInvoiceRepository
from billing_svc.invoices.tables import InvoiceNumberSequenceRow, InvoiceRow
from core import db

T0 = datetime(2027, 3, 1, tzinfo=UTC)
PREFIX = "TST"


def _unnumbered(invoice_id: str) -> Invoice:
    return Invoice(
        id=invoice_id,
        account_id="acct_numbers",
        subscription_id="",
        number="",
        status=InvoiceStatus.OPEN,
        reason=InvoiceReason.PERIOD,
        currency_code="USD",
        period_start=T0,
        period_end=T0,
        lines=(),
        description="",
        create_time=T0,
        update_time=T0,
        finalize_time=T0,
    )


async def _sequence_at(engine: AsyncEngine, next_value: int) -> None:
    """The sequence made (its first number) and then moved to `next_value`."""
    sessions = db.session_factory(engine)
    async with sessions() as session, session.begin():
        await SqlInvoiceRepository(session).next_number(PREFIX)
        await session.execute(
            update(InvoiceNumberSequenceRow)
            .where(InvoiceNumberSequenceRow.prefix == PREFIX)
            .values(next_value=next_value)
        )


async def test_numbers_are_spelled_as_number_text_across_six_digits(engine: AsyncEngine) -> None:
    await _sequence_at(engine, 999_998)
    sessions = db.session_factory(engine)
    returned = []
    async with sessions() as session, session.begin():
        invoices = SqlInvoiceRepository(session)
        for index in range(4):
            await invoices.add(_unnumbered(f"inv_numbers_{index}"))
            returned.append(await invoices.number_invoice(f"inv_numbers_{index}", PREFIX))
    expected = [number_text(PREFIX, value) for value in range(999_998, 1_000_002)]
    assert expected == ["TST-999998", "TST-999999", "TST-1000000", "TST-1000001"]
    assert returned == expected
    async with sessions() as session:
        stored = (
            await session.execute(
                select(InvoiceRow.number).where(InvoiceRow.id.like("inv_numbers_%")).order_by(InvoiceRow.id)
            )
        ).scalars()
        assert list(stored) == expected


async def test_a_rolled_back_number_is_taken_again(engine: AsyncEngine) -> None:
    await _sequence_at(engine, 41)
    sessions = db.session_factory(engine)
    async with sessions() as session:
        await session.begin()
        invoices = SqlInvoiceRepository(session)
        await invoices.add(_unnumbered("inv_rolled_back"))
        assert await invoices.number_invoice("inv_rolled_back", PREFIX) == "TST-000041"
        await session.rollback()
    async with sessions() as session, session.begin():
        invoices = SqlInvoiceRepository(session)
        await invoices.add(_unnumbered("inv_kept"))
        assert await invoices.number_invoice("inv_kept", PREFIX) == "TST-000041"


async def test_numbering_a_missing_invoice_fails(engine: AsyncEngine) -> None:
    sessions = db.session_factory(engine)
    async with sessions() as session, session.begin():
        # PostgreSQL's statement returns no row (NoResultFound); SQLite's UPDATE matches none.
        with pytest.raises((NoResultFound, LookupError)):
            await SqlInvoiceRepository(session).number_invoice("inv_missing", PREFIX)


async def test_a_second_cycle_invoice_for_one_subscription_period_is_refused_by_the_database(
    engine: AsyncEngine,
) -> None:
    """`cycle_key` is unique: whatever the worker's check saw, the database stores one invoice per
    subscription per period start (two workers racing past the check included)."""
    sessions = db.session_factory(engine)
    first, later = cycle_key("sub_cycle", T0), cycle_key("sub_cycle", T0 + timedelta(days=31))

    async def add(invoice_id: str, key: str) -> None:
        cycle = replace(_unnumbered(invoice_id), subscription_id="sub_cycle", status=InvoiceStatus.DRAFT)
        async with sessions() as session, session.begin():
            await SqlInvoiceRepository(session).add(cycle, cycle_key=key)

    await add("inv_cycle_1", first)
    with pytest.raises(IntegrityError):
        await add("inv_cycle_2", first)
    await add("inv_cycle_3", later)  # the next period of the same subscription is another key
    async with sessions() as session:
        stored = await session.execute(
            select(InvoiceRow.id, InvoiceRow.cycle_key)
            .where(InvoiceRow.id.like("inv_cycle_%"))
            .order_by(InvoiceRow.id)
        )
        assert [tuple(row) for row in stored] == [("inv_cycle_1", first), ("inv_cycle_3", later)]

"""SQL for test clocks: the adapter for `billing_svc.clocks.ports.TestClockRepository`. It reads and
writes through the unit of work's session and never commits.

It also reads and deletes subscription rows, by clock and by account: which subscription falls due
next on a clock, and the billing data that goes with a deleted clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.clocks.domain import DueSubscription, TestClock, account_on_test_clock
from billing_svc.clocks.tables import TestClockAccountRow, TestClockRow
from billing_svc.invoices.tables import InvoiceRow
from billing_svc.subscriptions.tables import PendingInvoiceItemRow, SubscriptionPhaseRow, SubscriptionRow
from core import ids
from core.pagination import keyset_after


def _columns(clock: TestClock) -> dict[str, Any]:
    return {
        "display_name": clock.display_name,
        "frozen_time": clock.frozen_time,
        "create_time": clock.create_time,
        "update_time": clock.update_time,
        "revision": clock.revision,
    }


def _to_domain(row: TestClockRow, account_ids: Sequence[str]) -> TestClock:
    return TestClock(
        id=row.id,
        display_name=row.display_name,
        frozen_time=row.frozen_time,
        account_ids=tuple(account_ids),
        create_time=row.create_time,
        update_time=row.update_time,
        revision=row.revision,
    )


class SqlTestClockRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def _accounts_of(self, clock_ids: Sequence[str]) -> dict[str, list[str]]:
        if not clock_ids:
            return {}
        statement = (
            select(TestClockAccountRow.test_clock_id, TestClockAccountRow.account_id)
            .where(TestClockAccountRow.test_clock_id.in_(clock_ids))
            .order_by(TestClockAccountRow.account_id)
        )
        found: dict[str, list[str]] = defaultdict(list)
        for clock_id, account_id in (await self._session.execute(statement)).all():
            found[clock_id].append(account_id)
        return found

    async def get(self, clock_id: str, *, for_update: bool = False) -> TestClock | None:
        if not clock_id or len(clock_id) > ids.MAX_LENGTH:
            return None
        statement = select(TestClockRow).where(TestClockRow.id == clock_id)
        if for_update:
            # PostgreSQL: advances, attaches and the delete of one clock take turns on its row.
            # SQLite has no row locks; its one writer (BEGIN IMMEDIATE) serialises them instead.
            statement = statement.with_for_update()
        row = (await self._session.execute(statement)).scalar_one_or_none()
        if row is None:
            return None
        return _to_domain(row, (await self._accounts_of([row.id])).get(row.id, []))

    async def add(self, clock: TestClock) -> None:
        self._session.add(TestClockRow(id=clock.id, **_columns(clock)))
        await self._session.flush()

    async def save(self, clock: TestClock) -> None:
        statement = (
            update(TestClockRow)
            .where(TestClockRow.id == clock.id)
            .values(**_columns(clock))
            .execution_options(synchronize_session=False)
        )
        result = await self._session.execute(statement)
        if int(getattr(result, "rowcount", 0)) != 1:
            raise LookupError(clock.id)

    async def list(self, *, after: tuple[datetime, str] | None, limit: int) -> list[TestClock]:
        statement = keyset_after(select(TestClockRow), TestClockRow.create_time, TestClockRow.id, after)
        rows = (await self._session.execute(statement.limit(limit))).scalars().all()
        accounts = await self._accounts_of([row.id for row in rows])
        return [_to_domain(row, accounts.get(row.id, [])) for row in rows]

    async def delete(self, clock_id: str) -> None:
        # The attachments first, not by ON DELETE CASCADE: SQLite enforces foreign keys only with
        # the pragma on, and nothing here should depend on a connection setting.
        await self._session.execute(
            delete(TestClockAccountRow).where(TestClockAccountRow.test_clock_id == clock_id)
        )
        await self._session.execute(delete(TestClockRow).where(TestClockRow.id == clock_id))

    async def attach(self, clock_id: str, account_id: str, time: datetime) -> None:
        self._session.add(
            TestClockAccountRow(account_id=account_id, test_clock_id=clock_id, attach_time=time)
        )
        try:
            await self._session.flush()
        except IntegrityError as exc:
            # The primary key is the account id: a concurrent attach of the account committed first.
            raise account_on_test_clock(account_id, None) from exc

    async def clock_of(self, account_id: str) -> str | None:
        statement = select(TestClockAccountRow.test_clock_id).where(
            TestClockAccountRow.account_id == account_id
        )
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def has_billing(self, account_id: str) -> bool:
        statement = select(exists().where(SubscriptionRow.account_id == account_id))
        return bool((await self._session.execute(statement)).scalar())

    async def next_due(self, clock_id: str, until: datetime) -> DueSubscription | None:
        statement = (
            select(SubscriptionRow.id, SubscriptionRow.account_id, SubscriptionRow.due_time)
            .where(
                SubscriptionRow.test_clock_id == clock_id,
                SubscriptionRow.due_time.is_not(None),
                SubscriptionRow.due_time <= until,
            )
            .order_by(SubscriptionRow.due_time, SubscriptionRow.id)
            .limit(1)
        )
        row = (await self._session.execute(statement)).first()
        if row is None or row.due_time is None:
            return None
        return DueSubscription(id=row.id, account_id=row.account_id, due_time=row.due_time)

    async def next_draft_due(self, clock_id: str, until: datetime) -> DueSubscription | None:
        statement = (
            select(InvoiceRow.id, InvoiceRow.account_id, InvoiceRow.finalize_due_time)
            .join(TestClockAccountRow, TestClockAccountRow.account_id == InvoiceRow.account_id)
            .where(
                TestClockAccountRow.test_clock_id == clock_id,
                InvoiceRow.finalize_due_time.is_not(None),
                InvoiceRow.finalize_due_time <= until,
            )
            .order_by(InvoiceRow.finalize_due_time, InvoiceRow.id)
            .limit(1)
        )
        row = (await self._session.execute(statement)).first()
        if row is None or row.finalize_due_time is None:
            return None
        return DueSubscription(id=row.id, account_id=row.account_id, due_time=row.finalize_due_time)

    async def delete_billing(self, account_ids: Iterable[str]) -> None:
        wanted = list(account_ids)
        if not wanted:
            return
        # Their drafts stay drafts, finalized by hand if at all: a rehearsal's grace period is not
        # the wall-clock worker's to end.
        drafts = update(InvoiceRow).where(
            InvoiceRow.account_id.in_(wanted), InvoiceRow.finalize_due_time.is_not(None)
        )
        await self._session.execute(
            drafts.values(finalize_due_time=None).execution_options(synchronize_session=False)
        )
        for statement in (
            delete(PendingInvoiceItemRow).where(PendingInvoiceItemRow.account_id.in_(wanted)),
            delete(SubscriptionPhaseRow).where(SubscriptionPhaseRow.account_id.in_(wanted)),
            delete(SubscriptionRow).where(SubscriptionRow.account_id.in_(wanted)),
        ):
            await self._session.execute(statement.execution_options(synchronize_session=False))

"""SQL for subscriptions, their phases and pending invoice items. No business rules."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Row, Select, Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.tables import PlanFeatureRow
from billing_svc.subscriptions.domain import (
    ENTITLED,
    Entitlement,
    ItemKind,
    PendingItem,
    ScheduledChange,
    State,
    Subscription,
)
from billing_svc.subscriptions.tables import PendingInvoiceItemRow, SubscriptionPhaseRow, SubscriptionRow
from core.db import add_all_rows, update_row
from core.pagination import keyset_after


def _to_domain(row: SubscriptionRow | Row[Any]) -> Subscription:
    scheduled = None
    if row.scheduled_plan_id is not None:
        assert row.scheduled_plan_version is not None
        assert row.scheduled_quantity is not None
        scheduled = ScheduledChange(row.scheduled_plan_id, row.scheduled_plan_version, row.scheduled_quantity)
    return Subscription(
        id=row.id,
        account_id=row.account_id,
        test_clock_id=row.test_clock_id,
        plan_id=row.plan_id,
        plan_version=row.plan_version,
        quantity=row.quantity,
        state=State(row.state),
        billing_time_zone=row.billing_time_zone,
        anchor_date=row.anchor_date,
        start_time=row.start_time,
        trial_end_time=row.trial_end_time,
        period_index=row.period_index,
        current_period_start=row.current_period_start,
        current_period_end=row.current_period_end,
        cancel_at_period_end=row.cancel_at_period_end,
        cancel_time=row.cancel_time,
        pause_time=row.pause_time,
        scheduled_change=scheduled,
        metadata=dict(row.metadata_),
        create_time=row.create_time,
        update_time=row.update_time,
        revision=row.revision,
    )


def _columns(subscription: Subscription) -> dict[str, Any]:
    scheduled = subscription.scheduled_change
    return {
        "account_id": subscription.account_id,
        "test_clock_id": subscription.test_clock_id,
        "plan_id": subscription.plan_id,
        "plan_version": subscription.plan_version,
        "quantity": subscription.quantity,
        "state": subscription.state.value,
        "billing_time_zone": subscription.billing_time_zone,
        "anchor_date": subscription.anchor_date,
        "start_time": subscription.start_time,
        "trial_end_time": subscription.trial_end_time,
        "period_index": subscription.period_index,
        "current_period_start": subscription.current_period_start,
        "current_period_end": subscription.current_period_end,
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "cancel_time": subscription.cancel_time,
        "pause_time": subscription.pause_time,
        "scheduled_plan_id": scheduled.plan_id if scheduled else None,
        "scheduled_plan_version": scheduled.plan_version if scheduled else None,
        "scheduled_quantity": scheduled.quantity if scheduled else None,
        "metadata_": dict(subscription.metadata),
        "create_time": subscription.create_time,
        "update_time": subscription.update_time,
        "revision": subscription.revision,
        # The claim columns (core.claims): the next boundary is when work falls due.
        "due_time": subscription.due_time,
    }


def pending_item_from_row(row: PendingInvoiceItemRow | Row[Any]) -> PendingItem:
    return PendingItem(
        id=row.id,
        account_id=row.account_id,
        subscription_id=row.subscription_id,
        kind=ItemKind(row.kind),
        fee_code=row.fee_code,
        description=row.description,
        currency_code=row.currency_code,
        amount_minor=row.amount_minor,
        quantity=Decimal(row.quantity),
        period_start=row.period_start,
        period_end=row.period_end,
        plan_id=row.plan_id,
        plan_version=row.plan_version,
        create_time=row.create_time,
        details=dict(row.details),
        invoice_id=row.invoice_id or "",
    )


@functools.cache
def _by_id(for_update: bool) -> Select[Any]:
    """`get`'s statement (parameter id), built once for each variant: Core columns, under the
    model's attribute names (`metadata_`), so no ORM object is made (nor kept in the session,
    where it would go stale once `save` updates the row with a Core statement)."""
    table = cast(Table, SubscriptionRow.__table__)
    columns = [column for column in table.c if column.key != "metadata"]
    statement = select(*columns, table.c.metadata.label("metadata_")).where(table.c.id == bindparam("id"))
    return statement.with_for_update() if for_update else statement


class SqlSubscriptionRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def get(self, subscription_id: str, *, for_update: bool = False) -> Subscription | None:
        found = await self._session.execute(_by_id(for_update), {"id": subscription_id})
        row = found.one_or_none()
        return _to_domain(row) if row is not None else None

    async def add(self, subscription: Subscription) -> None:
        self._session.add(SubscriptionRow(id=subscription.id, **_columns(subscription)))
        await self._session.flush()

    async def save(self, subscription: Subscription) -> None:
        if (
            await update_row(self._session, SubscriptionRow, ("id", subscription.id), _columns(subscription))
            != 1
        ):
            raise LookupError(subscription.id)

    async def list(
        self,
        *,
        account_id: str | None,
        show_canceled: bool,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Subscription]:
        if account_id is not None:
            statement = select(SubscriptionRow).where(SubscriptionRow.account_id == account_id)
        else:
            statement = select(SubscriptionRow)
        statement = keyset_after(statement, SubscriptionRow.create_time, SubscriptionRow.id, after)
        if not show_canceled:
            statement = statement.where(SubscriptionRow.state != State.CANCELED.value)
        rows = (await self._session.scalars(statement.limit(limit))).all()
        return [_to_domain(row) for row in rows]

    async def not_canceled(self, account_id: str) -> Sequence[Subscription]:
        """Every subscription of the account that is not canceled, as committed now (read again,
        not taken from the session's identity map, which a caller's earlier read may have filled)."""
        statement = (
            select(SubscriptionRow)
            .where(SubscriptionRow.account_id == account_id, SubscriptionRow.state != State.CANCELED.value)
            .order_by(SubscriptionRow.create_time, SubscriptionRow.id)
            .execution_options(populate_existing=True)
        )
        return [_to_domain(row) for row in (await self._session.scalars(statement)).all()]

    async def started_before(self, account_id: str, time: datetime) -> Sequence[Subscription]:
        """Every subscription of the account that started before `time`, canceled ones too, oldest
        first (by start time, then id)."""
        statement = (
            select(SubscriptionRow)
            .where(SubscriptionRow.account_id == account_id, SubscriptionRow.start_time < time)
            .order_by(SubscriptionRow.start_time, SubscriptionRow.id)
            .execution_options(populate_existing=True)  # as committed by this transaction's writes
        )
        return [_to_domain(row) for row in (await self._session.scalars(statement)).all()]

    async def record_phase(self, subscription: Subscription, at: datetime) -> None:
        """End the open phase at `at` and, unless canceled, open one with what applies from `at`."""
        await self._session.execute(
            update(SubscriptionPhaseRow)
            .where(
                SubscriptionPhaseRow.subscription_id == subscription.id,
                SubscriptionPhaseRow.end_time.is_(None),
            )
            .values(end_time=at)
            .execution_options(synchronize_session=False)
        )
        if subscription.state is State.CANCELED:
            return
        # A second change at the same instant replaces the phase that began then.
        existing = await self._session.get(SubscriptionPhaseRow, (subscription.id, at))
        values = {
            "end_time": None,
            "account_id": subscription.account_id,
            "plan_id": subscription.plan_id,
            "plan_version": subscription.plan_version,
            "quantity": subscription.quantity,
            "state": subscription.state.value,
        }
        if existing is None:
            self._session.add(SubscriptionPhaseRow(subscription_id=subscription.id, start_time=at, **values))
        else:
            for name, value in values.items():
                setattr(existing, name, value)
        await self._session.flush()

    async def entitlements(self, account_id: str) -> Sequence[Entitlement]:
        """One indexed read: the account's entitled subscriptions joined to their versions' features."""
        statement = (
            select(
                PlanFeatureRow.code, PlanFeatureRow.display_name, PlanFeatureRow.enabled, PlanFeatureRow.limit
            )
            .join(
                SubscriptionRow,
                (SubscriptionRow.plan_id == PlanFeatureRow.plan_id)
                & (SubscriptionRow.plan_version == PlanFeatureRow.version),
            )
            .where(
                SubscriptionRow.account_id == account_id,
                SubscriptionRow.state.in_([state.value for state in ENTITLED]),
            )
        )
        rows = (await self._session.execute(statement)).all()
        return [Entitlement(row.code, row.display_name, row.enabled, row.limit) for row in rows]


class SqlPendingItemRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add_all(self, items: Sequence[PendingItem]) -> None:
        await add_all_rows(
            self._session,
            PendingInvoiceItemRow,
            [
                {
                    "id": item.id,
                    "account_id": item.account_id,
                    "subscription_id": item.subscription_id,
                    "kind": item.kind.value,
                    "fee_code": item.fee_code,
                    "description": item.description,
                    "currency_code": item.currency_code,
                    "amount_minor": item.amount_minor,
                    "quantity": format(item.quantity, "f"),
                    "period_start": item.period_start,
                    "period_end": item.period_end,
                    "plan_id": item.plan_id,
                    "plan_version": item.plan_version,
                    "create_time": item.create_time,
                    "invoice_id": None,
                    "details": dict(item.details),
                }
                for item in items
            ],
        )

    async def list(
        self,
        *,
        account_id: str,
        subscription_id: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
        show_invoiced: bool = False,
    ) -> list[PendingItem]:
        statement = select(PendingInvoiceItemRow).where(PendingInvoiceItemRow.account_id == account_id)
        if not show_invoiced:
            statement = statement.where(PendingInvoiceItemRow.invoice_id.is_(None))
        if subscription_id is not None:
            statement = statement.where(PendingInvoiceItemRow.subscription_id == subscription_id)
        statement = keyset_after(
            statement, PendingInvoiceItemRow.create_time, PendingInvoiceItemRow.id, after
        )
        rows = (await self._session.scalars(statement.limit(limit))).all()
        return [pending_item_from_row(row) for row in rows]

"""Shared by the test clock tests: a stand-in for the subscriptions' work, the app built around it,
and subscription rows written directly (as the subscriptions module would write them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import select

from app.server import App, build
from billing_svc.clocks.ports import DoneWork
from billing_svc.clocks.sql_unit_of_work import SqlTestClocksUnitOfWork
from billing_svc.clocks.unit_of_work import TestClocksUnitOfWork
from billing_svc.subscriptions.tables import PendingInvoiceItemRow, SubscriptionPhaseRow, SubscriptionRow
from core import ids
from core.audit import AuditEventRow
from core.clock import FrozenClock
from core.errors import Unavailable
from core.outbox import OutboxEvent, read_events
from core.principal import Caller
from core.settings import Settings
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import test_clock_pb2
from tests.support import cheap_passwords

WALL = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)  # the app's wall clock: record times
T0 = datetime(2027, 1, 1, tzinfo=UTC)  # where test clocks start: simulated time


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def at(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


class Kind(StrEnum):  # as billing_svc.subscriptions.work.WorkKind spells its values
    RENEWAL = "renewal"
    CANCELLATION = "cancellation"


@dataclass(frozen=True)
class Done:
    kind: Kind
    due_time: datetime
    account_id: str
    subscription_id: str
    item_ids: tuple[str, ...]


@dataclass(frozen=True)
class Call:
    subscription_id: str
    now: datetime  # what the advance passed
    account_now: datetime  # what the account's billing time read in the same transaction
    test_clock_id: str | None


@dataclass
class FakeWork:
    """Stands in for billing_svc.subscriptions.work.run_due_work: renews a subscription by moving its
    due_time on by `period_days` (from its metadata) and records one pending invoice item, or, for
    `cancel` in its metadata, ends it (due_time NULL). `fail_at` makes the nth call fail as an outage."""

    calls: list[Call] = field(default_factory=list)
    fail_at: int | None = None

    async def __call__(
        self, uow: TestClocksUnitOfWork, subscription_id: str, now: datetime, *, caller: Caller
    ) -> Sequence[DoneWork]:
        session = cast(SqlTestClocksUnitOfWork, uow).session
        row = await session.get(SubscriptionRow, subscription_id)
        assert row is not None and row.due_time is not None and row.due_time <= now
        seen = await cast(SqlTestClocksUnitOfWork, uow).clocks.time_for(row.account_id)
        self.calls.append(Call(subscription_id, now, seen.now, seen.test_clock_id))
        if self.fail_at == len(self.calls):
            raise Unavailable("the database went away mid-work", reason="TEST_OUTAGE")
        due = row.due_time
        if row.metadata_.get("cancel"):
            kind, row.due_time, row.state = Kind.CANCELLATION, None, "canceled"
        else:
            kind, row.due_time = Kind.RENEWAL, due + timedelta(days=int(row.metadata_["period_days"]))
            row.period_index += 1
        item_id = ids.new_id("pii")
        session.add(_item(item_id, row, due))
        await session.flush()
        return [Done(kind, due, row.account_id, row.id, (item_id,))]

    def ran(self) -> list[tuple[str, datetime]]:
        return [(call.subscription_id, call.now) for call in self.calls]


def _item(item_id: str, row: SubscriptionRow, due: datetime) -> PendingInvoiceItemRow:
    return PendingInvoiceItemRow(
        id=item_id,
        account_id=row.account_id,
        subscription_id=row.id,
        kind="fixed",
        fee_code="base",
        description="base fee",
        currency_code="USD",
        amount_minor=1000,
        quantity="1",
        period_start=due,
        period_end=due,
        plan_id=row.plan_id,
        plan_version=row.plan_version,
        create_time=due,
        details={},
    )


@asynccontextmanager
async def clock_app(settings: Settings, work: FakeWork) -> AsyncIterator[App]:
    """The real server on a frozen wall clock, its advances running `work`."""
    app = await build(
        settings, clock=FrozenClock(WALL), passwords=cheap_passwords(), overrides={"run_due_work": work}
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0)


async def create_account(channel: grpc.aio.Channel, n: int) -> str:
    stub = account_pb2_grpc.AccountServiceStub(channel)
    account = account_pb2.Account(
        display_name=f"Rehearsal {n}", email=f"clock{n}@example.test", currency_code="USD"
    )
    return str((await stub.CreateAccount(account_pb2.CreateAccountRequest(account=account))).id)


async def add_subscription(
    app: App,
    account_id: str,
    clock_id: str | None,
    due: datetime | None,
    *,
    period_days: int = 30,
    cancel: bool = False,
) -> str:
    """A subscription row, with a phase, as the subscriptions module would leave one."""
    subscription_id = ids.new_id("sub")
    start = due - timedelta(days=period_days) if due is not None else T0
    metadata = {"period_days": str(period_days), **({"cancel": "1"} if cancel else {})}
    async with app.components.platform.writers() as session:
        session.add(
            SubscriptionRow(
                id=subscription_id,
                account_id=account_id,
                test_clock_id=clock_id,
                plan_id="plan_x",
                plan_version=1,
                quantity=1,
                state="active",
                billing_time_zone="UTC",
                anchor_date=date(2027, 1, 1),
                start_time=start,
                period_index=0,
                current_period_start=start,
                current_period_end=due or T0,
                cancel_at_period_end=cancel,
                metadata_=metadata,
                create_time=WALL,
                update_time=WALL,
                revision=1,
                due_time=due,
            )
        )
        session.add(
            SubscriptionPhaseRow(
                subscription_id=subscription_id,
                start_time=start,
                account_id=account_id,
                plan_id="plan_x",
                plan_version=1,
                quantity=1,
                state="active",
            )
        )
        await session.commit()
    return subscription_id


async def due_times(app: App) -> dict[str, datetime | None]:
    async with app.components.platform.readers() as session:
        rows = await session.execute(select(SubscriptionRow.id, SubscriptionRow.due_time))
        return {row.id: row.due_time for row in rows}


async def count(app: App, model: Any, **where: str) -> int:
    async with app.components.platform.readers() as session:
        statement = select(model)
        for name, value in where.items():
            statement = statement.where(getattr(model, name) == value)
        return len((await session.execute(statement)).all())


async def clock_audit(app: App, clock_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(action, changes) of the clock's audit events, in no particular order (the wall clock stands still)."""
    async with app.components.platform.readers() as session:
        statement = select(AuditEventRow).where(
            AuditEventRow.resource_type == "test_clock", AuditEventRow.resource_id == clock_id
        )
        rows = (await session.execute(statement)).scalars().all()
    return sorted(((row.action, dict(row.changes)) for row in rows), key=lambda item: item[0])


async def clock_events(app: App, clock_id: str) -> list[OutboxEvent]:
    """The clock's outbox events, in position (commit) order."""
    async with app.components.platform.readers() as session:
        events = await read_events(session, 0, 10_000)
    return [
        event for event in events if event.resource_type == "test_clock" and event.resource_id == clock_id
    ]


def new_clock(name: str = "Rehearsal", frozen_time: datetime = T0) -> test_clock_pb2.TestClock:
    return test_clock_pb2.TestClock(display_name=name, frozen_time=ts(frozen_time))

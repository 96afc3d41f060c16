"""Shared by the billing scenarios: one test clock and its accounts, driven through the real server.

A `Ledger` creates a test clock, accounts attached to it and their subscriptions, and advances
it. What an advance did comes back as `Work` tuples whose items are the pending invoice items
the work reported, resolved through ListPendingInvoiceItems, so a scenario compares whole lists
of plain tuples with the values it computed by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

import grpc
from google.protobuf import timestamp_pb2

from tally.billing.v1 import test_clock_pb2 as cpb
from tally.billing.v1 import test_clock_pb2_grpc
from tally.subscription.v1 import plan_pb2, subscription_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as spb
from tests.billing_support import new_account

DAY = plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_DAY, count=1)

FEE = "FEE"
CHARGE = "PRORATION_CHARGE"
CREDIT = "PRORATION_CREDIT"
RENEWAL = "RENEWAL"
TRIAL_END = "TRIAL_END"
CANCELLATION = "CANCELLATION"
SCHEDULED_CHANGE = "SCHEDULED_CHANGE"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def at(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


class Item(NamedTuple):
    """A pending invoice item as the scenarios compare it."""

    kind: str  # FEE, PRORATION_CHARGE or PRORATION_CREDIT
    fee_code: str
    amount_minor: int
    quantity: str
    start: datetime
    end: datetime
    currency: str = "USD"


def item(message: spb.PendingInvoiceItem) -> Item:
    return Item(
        spb.PendingInvoiceItem.Kind.Name(message.kind).removeprefix("KIND_"),
        message.fee_code,
        message.amount.amount_minor,
        message.quantity.value,
        at(message.period_start),
        at(message.period_end),
        message.amount.currency_code,
    )


def fee(
    amount: int,
    start: datetime,
    end: datetime,
    *,
    code: str = "base",
    quantity: str = "1",
    currency: str = "USD",
) -> Item:
    return Item(FEE, code, amount, quantity, start, end, currency)


class Work(NamedTuple):
    """One piece of BillingWork, its items resolved."""

    kind: str
    due: datetime
    subscription_id: str
    items: tuple[Item, ...] = ()


class Ledger:
    """A test clock, its accounts and their subscriptions."""

    def __init__(self, channel: grpc.aio.Channel, clock: cpb.TestClock):
        self.channel = channel
        self.clocks = test_clock_pb2_grpc.TestClockServiceStub(channel)
        self.subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        self.clock = clock
        self._accounts: dict[str, str] = {}  # subscription id -> account id

    @classmethod
    async def start(cls, channel: grpc.aio.Channel, frozen: datetime, name: str = "Scenario") -> Ledger:
        stub = test_clock_pb2_grpc.TestClockServiceStub(channel)
        clock = await stub.CreateTestClock(
            cpb.CreateTestClockRequest(test_clock=cpb.TestClock(display_name=name, frozen_time=ts(frozen)))
        )
        return cls(channel, clock)

    @property
    def now(self) -> datetime:
        return at(self.clock.frozen_time)

    async def account(self, n: int, *, zone: str = "UTC", currency: str = "USD") -> str:
        account = await new_account(self.channel, n, zone=zone, currency=currency)
        await self.clocks.AttachAccount(cpb.AttachAccountRequest(id=self.clock.id, account_id=account.id))
        return account.id

    async def subscribe(self, account_id: str, plan_id: str, quantity: int = 0) -> spb.Subscription:
        created = await self.subs.CreateSubscription(
            spb.CreateSubscriptionRequest(
                subscription=spb.Subscription(account_id=account_id, plan_id=plan_id, quantity=quantity)
            )
        )
        self._accounts[created.id] = account_id
        return created

    async def get(self, subscription_id: str) -> spb.Subscription:
        return await self.subs.GetSubscription(spb.GetSubscriptionRequest(id=subscription_id))

    async def messages(self, account_id: str) -> list[spb.PendingInvoiceItem]:
        reply = await self.subs.ListPendingInvoiceItems(
            spb.ListPendingInvoiceItemsRequest(account_id=account_id, page_size=1000, show_invoiced=True)
        )
        return list(reply.items)

    async def items(self, account_id: str) -> list[Item]:
        return [item(message) for message in await self.messages(account_id)]

    async def advance(self, to: datetime, request_id: str = "") -> list[Work]:
        reply = await self.clocks.AdvanceTestClock(
            cpb.AdvanceTestClockRequest(id=self.clock.id, frozen_time=ts(to), request_id=request_id)
        )
        self.clock = reply.test_clock
        return await self.resolve(reply)

    async def resolve(self, reply: cpb.AdvanceTestClockResponse) -> list[Work]:
        listed: dict[str, Item] = {}
        for account_id in {w.account_id for w in reply.work}:
            listed |= {m.id: item(m) for m in await self.messages(account_id)}
        work = []
        for w in reply.work:
            assert self._accounts[w.subscription_id] == w.account_id
            kind = cpb.BillingWork.Kind.Name(w.kind).removeprefix("KIND_")
            items = tuple(listed[item_id] for item_id in w.pending_invoice_item_ids)
            work.append(Work(kind, at(w.due_time), w.subscription_id, items))
        return work

    async def change(self, subscription_id: str, **fields: object) -> spb.ChangeSubscriptionResponse:
        """PreviewChange, then ChangeSubscription with the same fields: the preview must be exact."""
        preview = await self.subs.PreviewChange(spb.PreviewChangeRequest(id=subscription_id, **fields))  # type: ignore[arg-type]
        changed = await self.subs.ChangeSubscription(
            spb.ChangeSubscriptionRequest(id=subscription_id, **fields)  # type: ignore[arg-type]
        )
        assert all(not i.id for i in preview.items) and all(i.id.startswith("pii_") for i in changed.items)
        made = []
        for message in changed.items:
            copy = spb.PendingInvoiceItem()
            copy.CopyFrom(message)
            copy.id = ""
            made.append(copy)
        # On a test clock no time passes between the calls: the very same items, field by field.
        assert made == list(preview.items)
        assert preview.subscription.plan_id == changed.subscription.plan_id
        assert preview.subscription.quantity == changed.subscription.quantity
        assert preview.subscription.current_period_end == changed.subscription.current_period_end
        return changed

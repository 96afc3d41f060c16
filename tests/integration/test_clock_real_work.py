"""AdvanceTestClock with the subscriptions' real work (billing_svc.subscriptions.work), on each backend:
a subscription created on a clock starts at the clock's time, and an advance ends its trial and
renews it period by period, each at its own boundary, recording the items SubscriptionService lists."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import grpc

from tally.billing.v1 import test_clock_pb2 as pb
from tally.billing.v1 import test_clock_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan
from tests.integration.clock_support import at, ts
from tests.support import failing, reason

# Midnight of 31 January in New York (UTC-5 in winter): a month-end start in a local time zone.
START = datetime(2027, 1, 31, 5, tzinfo=UTC)
TARGET = datetime(2027, 6, 15, tzinfo=UTC)


async def test_an_advance_runs_the_subscriptions_boundaries_in_order(channel: grpc.aio.Channel) -> None:
    clocks = test_clock_pb2_grpc.TestClockServiceStub(channel)
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    clock = await clocks.CreateTestClock(
        pb.CreateTestClockRequest(test_clock=pb.TestClock(display_name="Real", frozen_time=ts(START)))
    )
    account = await new_account(channel, 1, zone="America/New_York")
    neighbour = await new_account(channel, 2)
    await clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id=account.id))
    plan = await new_plan(channel, "monthly-trial", trial_days=14)

    async def subscribe(account_id: str) -> spb.Subscription:
        return await subs.CreateSubscription(
            spb.CreateSubscriptionRequest(
                subscription=spb.Subscription(account_id=account_id, plan_id=plan.id)
            )
        )

    created = await subscribe(account.id)
    assert at(created.start_time) == START  # the clock's time, not the wall clock's
    assert created.state == spb.Subscription.STATE_TRIALING
    on_wall = await subscribe(neighbour.id)

    advanced = await clocks.AdvanceTestClock(pb.AdvanceTestClockRequest(id=clock.id, frozen_time=ts(TARGET)))
    work = list(advanced.work)
    assert at(advanced.test_clock.frozen_time) == TARGET
    assert work[0].kind == pb.BillingWork.KIND_TRIAL_END
    assert at(work[0].due_time) == at(created.trial_end_time) == START + timedelta(days=14)
    assert {w.kind for w in work[1:]} == {pb.BillingWork.KIND_RENEWAL}
    dues = [at(w.due_time) for w in work]
    assert dues == sorted(dues) and len(set(dues)) == len(dues) and dues[-1] <= TARGET
    # Boundaries are local midnights in the account's zone, across the DST change of 14 March.
    assert {d.astimezone(ZoneInfo("America/New_York")).time() for d in dues} == {time(0)}
    assert len(work) == 5  # the trial's end on 14 February, then renewals on the 14th to June
    assert {w.subscription_id for w in work} == {created.id}
    assert {w.account_id for w in work} == {account.id}

    now = await subs.GetSubscription(spb.GetSubscriptionRequest(id=created.id))
    assert now.state == spb.Subscription.STATE_ACTIVE
    assert at(now.current_period_start) == dues[-1] <= TARGET < at(now.current_period_end)
    # Every item the work reported is one SubscriptionService lists for the account.
    listed = await subs.ListPendingInvoiceItems(
        spb.ListPendingInvoiceItemsRequest(account_id=account.id, show_invoiced=True, page_size=1000)
    )
    reported = {item_id for w in work for item_id in w.pending_invoice_item_ids}
    assert reported and reported <= {item.id for item in listed.items}

    # Advancing again to the same time runs nothing; the wall-clock neighbour never moved.
    again = await clocks.AdvanceTestClock(pb.AdvanceTestClockRequest(id=clock.id, frozen_time=ts(TARGET)))
    assert list(again.work) == []
    assert await subs.GetSubscription(spb.GetSubscriptionRequest(id=on_wall.id)) == on_wall

    deleted = await clocks.DeleteTestClock(pb.DeleteTestClockRequest(id=clock.id))
    assert list(deleted.account_ids) == [account.id]
    error = await failing(subs.GetSubscription(spb.GetSubscriptionRequest(id=created.id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and reason(error)
    assert await subs.GetSubscription(spb.GetSubscriptionRequest(id=on_wall.id)) == on_wall

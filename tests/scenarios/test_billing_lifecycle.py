"""A subscription's life on a test clock, on each backend: a trial that turns into paid periods,
cancels at the period end (one undone, one left to take effect), a pause across a renewal, and
what an advance leaves alone (other clocks, the wall clock, an earlier or the same target).

Amounts are computed by hand in the comments: proration is the fee times the remaining seconds
over the period's seconds, rounded once, half away from zero.
"""

from __future__ import annotations

import grpc
import pytest

from tally.billing.v1 import test_clock_pb2 as cpb
from tally.subscription.v1 import subscription_pb2 as spb
from tests.billing_support import new_account, new_plan
from tests.scenarios.billing import (
    CANCELLATION,
    CHARGE,
    CREDIT,
    RENEWAL,
    TRIAL_END,
    Item,
    Ledger,
    Work,
    at,
    fee,
    ts,
    utc,
)
from tests.support import failing, reason

pytestmark = pytest.mark.scenario

Sub = spb.Subscription


async def test_a_trial_ends_at_local_midnight_and_the_renewals_keep_its_day(
    channel: grpc.aio.Channel,
) -> None:
    # 20 May 2027 at 17:00 in Paris (UTC+2 in summer).
    ledger = await Ledger.start(channel, utc(2027, 5, 20, 15))
    account = await ledger.account(1, zone="Europe/Paris")
    plan = await new_plan(channel, "trial-monthly", base_minor=2500, trial_days=14)
    sub = await ledger.subscribe(account, plan.id)
    assert sub.state == Sub.STATE_TRIALING
    # The trial runs from the local day's midnight (20 May 00:00 = 19 May 22:00Z) to the
    # midnight 14 days after the start date: 3 June 00:00 in Paris = 2 June 22:00Z.
    trial_end = utc(2027, 6, 2, 22)
    assert at(sub.current_period_start) == utc(2027, 5, 19, 22)
    assert at(sub.trial_end_time) == at(sub.current_period_end) == at(sub.billing_cycle_anchor) == trial_end
    assert await ledger.items(account) == []  # nothing is owed during a trial

    assert await ledger.advance(utc(2027, 6, 2, 21, 59, 59)) == []
    assert (await ledger.get(sub.id)).state == Sub.STATE_TRIALING

    # The first fee at the trial's end; renewals on the 3rd of each month, local midnight.
    bounds = [utc(2027, m, 2, 22) for m in (6, 7, 8, 9, 10)]
    fees = [fee(2500, bounds[i], bounds[i + 1]) for i in range(4)]
    work = await ledger.advance(utc(2027, 9, 10))
    assert work == [
        Work(TRIAL_END, bounds[0], sub.id, (fees[0],)),
        Work(RENEWAL, bounds[1], sub.id, (fees[1],)),
        Work(RENEWAL, bounds[2], sub.id, (fees[2],)),
        Work(RENEWAL, bounds[3], sub.id, (fees[3],)),
    ]
    assert await ledger.items(account) == fees
    now = await ledger.get(sub.id)
    assert now.state == Sub.STATE_ACTIVE
    assert (at(now.current_period_start), at(now.current_period_end)) == (bounds[3], bounds[4])


async def test_a_cancel_at_period_end_can_be_undone_or_take_effect(channel: grpc.aio.Channel) -> None:
    ledger = await Ledger.start(channel, utc(2027, 8, 10, 9))
    kept_account, gone_account = await ledger.account(1), await ledger.account(2)
    plan = await new_plan(channel, "cancel-monthly")
    kept = await ledger.subscribe(kept_account, plan.id)
    gone = await ledger.subscribe(gone_account, plan.id)
    first = fee(3000, utc(2027, 8, 10), utc(2027, 9, 10))

    assert await ledger.advance(utc(2027, 8, 20)) == []
    for sub in (kept, gone):
        canceling = await ledger.subs.CancelSubscription(
            spb.CancelSubscriptionRequest(id=sub.id, at_period_end=True)
        )
        assert canceling.cancel_at_period_end and canceling.state == Sub.STATE_ACTIVE
    undone = await ledger.subs.UncancelSubscription(spb.UncancelSubscriptionRequest(id=kept.id))
    assert not undone.cancel_at_period_end
    # Scheduling or undoing a cancel credits nothing.
    assert await ledger.items(kept_account) == await ledger.items(gone_account) == [first]

    # 10 September: the kept one renews, the other is canceled there with no new fee.
    months = [utc(2027, m, 10) for m in (9, 10, 11, 12)]
    renewals = [fee(3000, months[i], months[i + 1]) for i in range(3)]
    work = await ledger.advance(utc(2027, 11, 15))
    expected = [Work(RENEWAL, months[0], kept.id, (renewals[0],)), Work(CANCELLATION, months[0], gone.id)]
    assert work == [
        *sorted(expected, key=lambda w: w.subscription_id),  # one due time: by subscription id
        Work(RENEWAL, months[1], kept.id, (renewals[1],)),
        Work(RENEWAL, months[2], kept.id, (renewals[2],)),
    ]
    ended = await ledger.get(gone.id)
    assert ended.state == Sub.STATE_CANCELED and at(ended.cancel_time) == months[0]
    assert not ended.cancel_at_period_end
    assert await ledger.items(gone_account) == [first]
    assert await ledger.items(kept_account) == [first, *renewals]
    error = await failing(ledger.subs.UncancelSubscription(spb.UncancelSubscriptionRequest(id=gone.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Later advances have no more work for the canceled one.
    december = fee(3000, months[3], utc(2028, 1, 10))
    assert await ledger.advance(utc(2028, 1, 1)) == [Work(RENEWAL, months[3], kept.id, (december,))]
    assert await ledger.get(gone.id) == ended
    assert await ledger.items(gone_account) == [first]


async def test_a_pause_across_a_renewal_credits_then_charges_on_resume(channel: grpc.aio.Channel) -> None:
    ledger = await Ledger.start(channel, utc(2027, 9, 1))
    account = await ledger.account(1)
    plan = await new_plan(channel, "pause-monthly")
    sub = await ledger.subscribe(account, plan.id)
    first = fee(3000, utc(2027, 9, 1), utc(2027, 10, 1))

    assert await ledger.advance(utc(2027, 9, 21)) == []
    paused = await ledger.subs.PauseSubscription(spb.PauseSubscriptionRequest(id=sub.id))
    assert paused.state == Sub.STATE_PAUSED and at(paused.pause_time) == utc(2027, 9, 21)
    # Credit for 21 Sep to 1 Oct, 10 of the period's 30 days: 3000 * 10/30 = 1000.
    credit = Item(CREDIT, "base", -1000, "1", utc(2027, 9, 21), utc(2027, 10, 1))
    assert await ledger.items(account) == [first, credit]

    # The renewal of 1 October runs (the periods keep rolling) but charges nothing while paused.
    assert await ledger.advance(utc(2027, 10, 16)) == [Work(RENEWAL, utc(2027, 10, 1), sub.id)]
    still = await ledger.get(sub.id)
    assert still.state == Sub.STATE_PAUSED
    assert (at(still.current_period_start), at(still.current_period_end)) == (
        utc(2027, 10, 1),
        utc(2027, 11, 1),
    )
    assert await ledger.items(account) == [first, credit]

    resumed = await ledger.subs.ResumeSubscription(spb.ResumeSubscriptionRequest(id=sub.id))
    assert resumed.state == Sub.STATE_ACTIVE and not resumed.HasField("pause_time")
    # Charge for 16 Oct to 1 Nov, 16 of October's 31 days: 3000 * 16/31 = 1548.39 -> 1548.
    charge = Item(CHARGE, "base", 1548, "1", utc(2027, 10, 16), utc(2027, 11, 1))
    assert await ledger.items(account) == [first, credit, charge]

    november = fee(3000, utc(2027, 11, 1), utc(2027, 12, 1))
    assert await ledger.advance(utc(2027, 11, 1, 12)) == [
        Work(RENEWAL, utc(2027, 11, 1), sub.id, (november,))
    ]
    assert await ledger.items(account) == [first, credit, charge, november]


async def test_an_advance_is_idempotent_cannot_go_back_and_touches_only_its_clock(
    channel: grpc.aio.Channel,
) -> None:
    ours = await Ledger.start(channel, utc(2027, 1, 10), "Ours")
    theirs = await Ledger.start(channel, utc(2027, 1, 10), "Theirs")
    plan = await new_plan(channel, "isolated-monthly")
    account = await ours.account(1)
    sub = await ours.subscribe(account, plan.id)
    other_account = await theirs.account(2)
    other = await theirs.subscribe(other_account, plan.id)
    # On the wall clock (December 2026 on this machine or later): its first period is long over
    # by the target below, and an advance of a test clock still must not renew it.
    wall_account = (await new_account(channel, 3)).id
    on_wall = await ours.subscribe(wall_account, plan.id)
    wall_items, other_items = await ours.items(wall_account), await theirs.items(other_account)

    months = [utc(2027, m, 10) for m in (1, 2, 3, 4, 5)]
    fees = [fee(3000, months[i], months[i + 1]) for i in range(4)]
    target = months[3]  # due work at exactly the target runs
    work = await ours.advance(target, request_id="advance-to-april")
    assert work == [Work(RENEWAL, months[i], sub.id, (fees[i],)) for i in (1, 2, 3)]
    assert await ours.items(account) == fees

    # The same request id replays the first answer; the same target without one does nothing.
    replay = await ours.clocks.AdvanceTestClock(
        cpb.AdvanceTestClockRequest(id=ours.clock.id, frozen_time=ts(target), request_id="advance-to-april")
    )
    assert await ours.resolve(replay) == work
    assert await ours.advance(target) == []
    assert ours.now == target
    error = await failing(
        ours.clocks.AdvanceTestClock(
            cpb.AdvanceTestClockRequest(id=ours.clock.id, frozen_time=ts(utc(2027, 4, 9, 23, 59, 59)))
        )
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "CLOCK_BACKWARDS")
    assert await ours.items(account) == fees  # nothing ran twice

    # The other clock and the wall-clock account did not move.
    clock = await theirs.clocks.GetTestClock(cpb.GetTestClockRequest(id=theirs.clock.id))
    assert at(clock.frozen_time) == utc(2027, 1, 10)
    assert await theirs.get(other.id) == other
    assert await ours.get(on_wall.id) == on_wall
    assert await theirs.items(other_account) == other_items == [fees[0]]
    assert await ours.items(wall_account) == wall_items

    # Advancing theirs runs only theirs.
    assert await theirs.advance(utc(2027, 2, 15)) == [Work(RENEWAL, months[1], other.id, (fees[1],))]
    assert await ours.items(account) == fees
    assert await ours.get(on_wall.id) == on_wall

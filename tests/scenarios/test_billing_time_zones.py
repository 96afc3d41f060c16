"""Billing in local time on a test clock, on each backend: an account in America/New_York across
both daylight-saving changes of 2027 (14 March and 7 November), and one in Asia/Kathmandu, whose
offset (+05:45) is not a whole hour.

New York is UTC-5 in winter and UTC-4 in summer, so its local midnights are 05:00Z and 04:00Z.
Proration divides by real seconds: a monthly period containing 14 March is 743 hours, the day of
14 March 23 hours and the day of 7 November 25 hours. Each amount is worked out in a comment.
"""

from __future__ import annotations

import grpc
import pytest

from tally.subscription.v1 import subscription_pb2 as spb
from tests.billing_support import new_plan
from tests.scenarios.billing import CHARGE, CREDIT, DAY, RENEWAL, Item, Ledger, Work, at, fee, item, utc

pytestmark = pytest.mark.scenario

# New York's 2027 changes (14 March 02:00 EST -> EDT, 7 November 02:00 EDT -> EST):
# https://www.timeanddate.com/time/change/usa/new-york?year=2027
# Kathmandu is UTC+05:45 all year: https://www.timeanddate.com/time/zone/nepal/kathmandu
NEW_YORK = "America/New_York"


async def _change_then_cancel(ledger: Ledger, account: str, plan_id: str) -> list[Item]:
    """Moves `account`'s one subscription to `plan_id` now, then cancels it (credits nothing).

    Returns the change's items."""
    [sub] = (
        await ledger.subs.ListSubscriptions(spb.ListSubscriptionsRequest(account_id=account))
    ).subscriptions
    changed = await ledger.change(sub.id, plan_id=plan_id)
    canceled = await ledger.subs.CancelSubscription(spb.CancelSubscriptionRequest(id=sub.id))
    assert canceled.state == spb.Subscription.STATE_CANCELED
    return [item(message) for message in changed.items]


async def test_new_york_across_both_daylight_saving_changes(channel: grpc.aio.Channel) -> None:
    ledger = await Ledger.start(channel, utc(2027, 3, 1, 12))
    monthly_account, spring_account, fall_account = [
        await ledger.account(n, zone=NEW_YORK) for n in (1, 2, 3)
    ]
    basic = await new_plan(channel, "ny-basic", base_minor=3000)
    pro = await new_plan(channel, "ny-pro", base_minor=9000)
    daily = await new_plan(channel, "ny-daily", base_minor=2400, interval=DAY)
    daily_pro = await new_plan(channel, "ny-daily-pro", base_minor=4800, interval=DAY)
    monthly = await ledger.subscribe(monthly_account, basic.id)
    march = (utc(2027, 3, 1, 5), utc(2027, 4, 1, 4))  # EST to EDT midnights: 31 * 24 - 1 = 743 hours
    assert (at(monthly.current_period_start), at(monthly.current_period_end)) == march

    # An upgrade at local midnight on 10 March, before the change: 22 days less an hour, 527 hours,
    # remain of 743. Credit 3000 * 527/743 = 2127.86 -> 2128; charge 9000 * 527/743 = 6383.58
    # -> 6384. (Counting 24-hour days, 528/744, would give 2129 and 6387.)
    assert await ledger.advance(utc(2027, 3, 10, 5)) == []
    upgrade = await ledger.change(monthly.id, plan_id=pro.id)
    assert [item(message) for message in upgrade.items] == [
        Item(CREDIT, "base", -2128, "1", utc(2027, 3, 10, 5), march[1]),
        Item(CHARGE, "base", 6384, "1", utc(2027, 3, 10, 5), march[1]),
    ]

    # A daily plan over 14 March: that day runs from 05:00Z to 04:00Z the next day, 23 hours.
    assert await ledger.advance(utc(2027, 3, 13, 12)) == []
    spring = await ledger.subscribe(spring_account, daily.id)
    assert (at(spring.current_period_start), at(spring.current_period_end)) == (
        utc(2027, 3, 13, 5),
        utc(2027, 3, 14, 5),
    )
    short_day = fee(2400, utc(2027, 3, 14, 5), utc(2027, 3, 15, 4))
    assert await ledger.advance(utc(2027, 3, 14, 16)) == [
        Work(RENEWAL, utc(2027, 3, 14, 5), spring.id, (short_day,))
    ]
    # At 12:00 EDT (16:00Z), 12 of the day's 23 hours remain:
    # credit 2400 * 12/23 = 1252.17 -> 1252; charge 4800 * 12/23 = 2504.35 -> 2504.
    assert await _change_then_cancel(ledger, spring_account, daily_pro.id) == [
        Item(CREDIT, "base", -1252, "1", utc(2027, 3, 14, 16), utc(2027, 3, 15, 4)),
        Item(CHARGE, "base", 2504, "1", utc(2027, 3, 14, 16), utc(2027, 3, 15, 4)),
    ]

    # The monthly renewals through summer fall on the 1st at 04:00Z (EDT, to and with 1 November).
    summer = [utc(2027, m, 1, 4) for m in range(4, 12)]
    work = await ledger.advance(utc(2027, 11, 6, 12))
    ends = [*summer[1:], utc(2027, 12, 1, 5)]  # 1 December is EST again: 05:00Z
    assert work == [
        Work(RENEWAL, s, monthly.id, (fee(9000, s, e),)) for s, e in zip(summer, ends, strict=True)
    ]

    # A daily plan over 7 November: that day runs from 04:00Z to 05:00Z the next day, 25 hours.
    fall = await ledger.subscribe(fall_account, daily.id)
    assert (at(fall.current_period_start), at(fall.current_period_end)) == (
        utc(2027, 11, 6, 4),
        utc(2027, 11, 7, 4),
    )
    long_day = fee(2400, utc(2027, 11, 7, 4), utc(2027, 11, 8, 5))
    assert await ledger.advance(utc(2027, 11, 7, 17)) == [
        Work(RENEWAL, utc(2027, 11, 7, 4), fall.id, (long_day,))
    ]
    # At 12:00 EST (17:00Z), 12 of the day's 25 hours remain:
    # credit 2400 * 12/25 = 1152; charge 4800 * 12/25 = 2304.
    assert await _change_then_cancel(ledger, fall_account, daily_pro.id) == [
        Item(CREDIT, "base", -1152, "1", utc(2027, 11, 7, 17), utc(2027, 11, 8, 5)),
        Item(CHARGE, "base", 2304, "1", utc(2027, 11, 7, 17), utc(2027, 11, 8, 5)),
    ]

    # The canceled daily subscriptions have no more work; the monthly renews at 05:00Z.
    december = fee(9000, utc(2027, 12, 1, 5), utc(2028, 1, 1, 5))
    assert await ledger.advance(utc(2027, 12, 1, 12)) == [
        Work(RENEWAL, utc(2027, 12, 1, 5), monthly.id, (december,))
    ]
    assert await ledger.items(fall_account) == [
        fee(2400, utc(2027, 11, 6, 4), utc(2027, 11, 7, 4)),
        long_day,
        Item(CREDIT, "base", -1152, "1", utc(2027, 11, 7, 17), utc(2027, 11, 8, 5)),
        Item(CHARGE, "base", 2304, "1", utc(2027, 11, 7, 17), utc(2027, 11, 8, 5)),
    ]


async def test_kathmandu_boundaries_fall_at_1815z_the_day_before(channel: grpc.aio.Channel) -> None:
    # 30 January 19:00Z is already 31 January (00:45) in Kathmandu: the anchor is the 31st.
    ledger = await Ledger.start(channel, utc(2027, 1, 30, 19))
    account = await ledger.account(1, zone="Asia/Kathmandu")
    plan = await new_plan(channel, "kathmandu-monthly")
    sub = await ledger.subscribe(account, plan.id)
    # Local midnights of 31 Jan, 28 Feb, 31 Mar, 30 Apr and 31 May, each 18:15Z the day before.
    bounds = [utc(2027, 1, 30, 18, 15), utc(2027, 2, 27, 18, 15), utc(2027, 3, 30, 18, 15)]
    bounds += [utc(2027, 4, 29, 18, 15), utc(2027, 5, 30, 18, 15)]
    assert at(sub.billing_cycle_anchor) == at(sub.current_period_start) == bounds[0]
    fees = [fee(3000, bounds[i], bounds[i + 1]) for i in range(4)]
    assert await ledger.advance(utc(2027, 5, 1)) == [
        Work(RENEWAL, bounds[i], sub.id, (fees[i],)) for i in (1, 2, 3)
    ]
    assert await ledger.items(account) == fees

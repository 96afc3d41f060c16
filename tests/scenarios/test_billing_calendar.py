"""A simulated year on a test clock: monthly and yearly renewals, and month-end anchors through
February in a common year (2027) and a leap year (2028), on each backend.

Boundaries are written out by hand as local midnights (zoneinfo gives their UTC instants); the
amounts are the plans' fees, in minor units of a zero-decimal (JPY) and a three-decimal (KWD)
currency.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import grpc
import pytest

from tally.subscription.v1 import subscription_pb2 as spb
from tests.billing_support import YEAR, new_plan
from tests.scenarios.billing import RENEWAL, Ledger, Work, at, fee, utc

pytestmark = pytest.mark.scenario

# Berlin's 2027 changes (28 March to CEST, 31 October back to CET):
# https://www.timeanddate.com/time/change/germany/berlin?year=2027
# Minor units: JPY has none, KWD three (ISO 4217, https://www.iso.org/iso-4217-currency-codes.html).
BERLIN = ZoneInfo("Europe/Berlin")


def midnight(zone: ZoneInfo, year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=zone).astimezone(UTC)


async def test_a_monthly_plan_bills_twelve_fees_a_year_at_the_anchor_days_local_midnight(
    channel: grpc.aio.Channel,
) -> None:
    ledger = await Ledger.start(channel, utc(2027, 1, 15, 10, 30))
    account = await ledger.account(1, zone="Europe/Berlin", currency="JPY")
    # JPY has no minor unit: 980 yen is amount_minor 980.
    plan = await new_plan(channel, "monthly-yen", base_minor=980, currency="JPY")
    sub = await ledger.subscribe(account, plan.id)
    assert sub.state == spb.Subscription.STATE_ACTIVE
    # The 15th of each month at 00:00 in Berlin: 23:00Z the day before in winter (UTC+1),
    # 22:00Z in summer (UTC+2, 28 March to 31 October 2027).
    bounds = [midnight(BERLIN, 2027 + (m - 1) // 12, (m - 1) % 12 + 1, 15) for m in range(1, 14)]
    assert bounds[0] == utc(2027, 1, 14, 23) and bounds[3] == utc(2027, 4, 14, 22)
    assert bounds[9] == utc(2027, 10, 14, 22) and bounds[10] == utc(2027, 11, 14, 23)
    assert at(sub.billing_cycle_anchor) == at(sub.current_period_start) == bounds[0]
    assert at(sub.current_period_end) == bounds[1]
    fees = [fee(980, bounds[i], bounds[i + 1], currency="JPY") for i in range(12)]
    assert await ledger.items(account) == fees[:1]

    # To 14 January 2028 at 13:00 in Berlin, just before the anniversary: renewals on the 15th of
    # February to December, eleven, each recording one fee; twelve fees in all.
    work = await ledger.advance(utc(2028, 1, 14, 12))
    assert work == [Work(RENEWAL, bounds[i], sub.id, (fees[i],)) for i in range(1, 12)]
    assert await ledger.items(account) == fees
    now = await ledger.get(sub.id)
    assert (at(now.current_period_start), at(now.current_period_end)) == (bounds[11], bounds[12])
    assert now.state == spb.Subscription.STATE_ACTIVE


async def test_a_yearly_plan_renews_once_a_year(channel: grpc.aio.Channel) -> None:
    ledger = await Ledger.start(channel, utc(2027, 3, 10, 12))
    account = await ledger.account(2, zone="Asia/Kuwait", currency="KWD")
    # KWD has three decimals: 12.345 dinars is amount_minor 12345.
    plan = await new_plan(channel, "yearly-dinar", base_minor=12345, currency="KWD", interval=YEAR)
    sub = await ledger.subscribe(account, plan.id)
    # Kuwait is UTC+3 all year: 10 March 00:00 local is 9 March 21:00Z.
    first = fee(12345, utc(2027, 3, 9, 21), utc(2028, 3, 9, 21), currency="KWD")
    second = fee(12345, utc(2028, 3, 9, 21), utc(2029, 3, 9, 21), currency="KWD")
    assert await ledger.items(account) == [first]
    assert await ledger.advance(utc(2028, 3, 9, 20, 59, 59)) == []  # a second before: nothing due
    assert await ledger.advance(utc(2028, 3, 10, 12)) == [
        Work(RENEWAL, utc(2028, 3, 9, 21), sub.id, (second,))
    ]
    assert await ledger.items(account) == [first, second]


@pytest.mark.parametrize(
    ("year", "february"),
    [(2027, 28), (2028, 29)],  # 2027 is a common year, 2028 a leap year
)
async def test_month_end_anchors_keep_their_day_through_february(
    channel: grpc.aio.Channel, year: int, february: int
) -> None:
    ledger = await Ledger.start(channel, utc(year, 1, 29, 12))
    accounts = [await ledger.account(day) for day in (29, 30, 31)]
    plan = await new_plan(channel, f"monthly-{year}")
    subs = []
    for day, account in zip((29, 30, 31), accounts, strict=True):
        if day > 29:
            assert await ledger.advance(utc(year, 1, day, 12)) == []
        subs.append(await ledger.subscribe(account, plan.id))

    # Anchor d: January d, then February min(d, February's length), then March d, then April
    # min(d, 30): the clamped day is not carried on (Jan 31 -> Feb 28 or 29 -> Mar 31 -> Apr 30).
    def bounds(day: int) -> list[datetime]:
        return [
            utc(year, 1, day),
            utc(year, 2, min(day, february)),
            utc(year, 3, day),
            utc(year, 4, min(day, 30)),
        ]

    expected_work = []
    for day, account, sub in zip((29, 30, 31), accounts, subs, strict=True):
        assert at(sub.billing_cycle_anchor) == bounds(day)[0]
        assert await ledger.items(account) == [fee(3000, bounds(day)[0], bounds(day)[1])]
        expected_work += [
            Work(RENEWAL, bounds(day)[i], sub.id, (fee(3000, *bounds(day)[i : i + 2]),)) for i in (1, 2)
        ]

    work = await ledger.advance(utc(year, 4, 1, 12))
    # In time order across the three subscriptions; at a shared due time, by subscription id.
    assert work == sorted(expected_work, key=lambda w: (w.due, w.subscription_id))
    for day, account, sub in zip((29, 30, 31), accounts, subs, strict=True):
        b = bounds(day)
        assert await ledger.items(account) == [fee(3000, b[i], b[i + 1]) for i in range(3)]
        now = await ledger.get(sub.id)
        assert (at(now.current_period_start), at(now.current_period_end)) == (b[2], b[3])

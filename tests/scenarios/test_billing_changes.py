"""Mid-cycle changes on a test clock, on each backend: an upgrade and a downgrade of the plan, and
seat quantities up and down, each previewed first (PreviewChange must return exactly the items
ChangeSubscription then makes: no time passes between the calls on a test clock).

Each line's amount is worked out in a comment: the fee times the remaining seconds over the
period's seconds, rounded once, half away from zero.
"""

from __future__ import annotations

import grpc
import pytest

from tally.subscription.v1 import subscription_pb2 as spb
from tests.billing_support import new_plan, per_seat
from tests.scenarios.billing import CHARGE, CREDIT, RENEWAL, SCHEDULED_CHANGE, Item, Ledger, Work, fee, utc

pytestmark = pytest.mark.scenario


async def test_an_upgrade_and_a_downgrade_mid_cycle_prorate_both_fees(channel: grpc.aio.Channel) -> None:
    ledger = await Ledger.start(channel, utc(2027, 4, 1, 8))
    account = await ledger.account(1)
    basic = await new_plan(channel, "basic-monthly", base_minor=3000)
    pro = await new_plan(channel, "pro-monthly", base_minor=9000)
    sub = await ledger.subscribe(account, basic.id)
    april = (utc(2027, 4, 1), utc(2027, 5, 1))  # 30 days
    first = fee(3000, *april)

    assert await ledger.advance(utc(2027, 4, 16)) == []
    upgraded = await ledger.change(sub.id, plan_id=pro.id)
    assert (upgraded.subscription.plan_id, upgraded.subscription.plan_version) == (pro.id, 1)
    # 16 April to 1 May is 15 of April's 30 days:
    # credit 3000 * 15/30 = 1500 of the old fee, charge 9000 * 15/30 = 4500 of the new one.
    up = [
        Item(CREDIT, "base", -1500, "1", utc(2027, 4, 16), april[1]),
        Item(CHARGE, "base", 4500, "1", utc(2027, 4, 16), april[1]),
    ]
    assert [i.plan_id for i in upgraded.items] == [basic.id, pro.id]  # each line prices its own plan
    assert await ledger.items(account) == [first, *up]

    assert await ledger.advance(utc(2027, 4, 22, 6)) == []
    downgraded = await ledger.change(sub.id, plan_id=basic.id)
    assert downgraded.subscription.plan_id == basic.id
    # 22 April 06:00 to 1 May is 8 days 18 hours = 8.75 of 30 days:
    # credit 9000 * 8.75/30 = 2625, charge 3000 * 8.75/30 = 875.
    down = [
        Item(CREDIT, "base", -2625, "1", utc(2027, 4, 22, 6), april[1]),
        Item(CHARGE, "base", 875, "1", utc(2027, 4, 22, 6), april[1]),
    ]
    assert await ledger.items(account) == [first, *up, *down]

    may = fee(3000, utc(2027, 5, 1), utc(2027, 6, 1))  # the renewal bills the plan it is on now
    assert await ledger.advance(utc(2027, 5, 1, 12)) == [Work(RENEWAL, utc(2027, 5, 1), sub.id, (may,))]
    assert await ledger.items(account) == [first, *up, *down, may]


async def test_seat_changes_prorate_only_the_seat_fee(channel: grpc.aio.Channel) -> None:
    ledger = await Ledger.start(channel, utc(2027, 6, 1))
    account = await ledger.account(1)
    plan = await new_plan(channel, "team-monthly", base_minor=5000, seat_price=per_seat("12.50"))
    sub = await ledger.subscribe(account, plan.id, quantity=3)
    june = (utc(2027, 6, 1), utc(2027, 7, 1))  # 30 days
    # Base 50.00, and 3 seats at 12.50 = 37.50.
    first = [fee(5000, *june), fee(3750, *june, code="seats", quantity="3")]
    assert await ledger.items(account) == first

    assert await ledger.advance(utc(2027, 6, 11)) == []
    more = await ledger.change(sub.id, quantity=5)
    assert more.subscription.quantity == 5
    # 11 June to 1 July is 20 of 30 days; the base fee is unchanged and makes no lines.
    # Credit 3750 * 20/30 = 2500 for 3 seats; charge 5 * 1250 = 6250 * 20/30 = 4166.67 -> 4167.
    up = [
        Item(CREDIT, "seats", -2500, "3", utc(2027, 6, 11), june[1]),
        Item(CHARGE, "seats", 4167, "5", utc(2027, 6, 11), june[1]),
    ]
    assert await ledger.items(account) == [*first, *up]

    assert await ledger.advance(utc(2027, 6, 21, 12)) == []
    fewer = await ledger.change(sub.id, quantity=2)
    assert fewer.subscription.quantity == 2
    # 21 June 12:00 to 1 July is 9.5 of 30 days:
    # credit 6250 * 9.5/30 = 1979.17 -> 1979; charge 2500 * 9.5/30 = 791.67 -> 792.
    down = [
        Item(CREDIT, "seats", -1979, "5", utc(2027, 6, 21, 12), june[1]),
        Item(CHARGE, "seats", 792, "2", utc(2027, 6, 21, 12), june[1]),
    ]
    assert await ledger.items(account) == [*first, *up, *down]

    july = (utc(2027, 7, 1), utc(2027, 8, 1))
    renewal = (fee(5000, *july), fee(2500, *july, code="seats", quantity="2"))
    assert await ledger.advance(utc(2027, 7, 10)) == [Work(RENEWAL, july[0], sub.id, renewal)]

    # A change at the period end makes no items now, then takes effect at the boundary, whose
    # renewal bills the new quantity: 4 * 12.50 = 50.00.
    scheduled = await ledger.change(sub.id, quantity=4, timing=spb.CHANGE_TIMING_PERIOD_END)
    assert list(scheduled.items) == [] and scheduled.subscription.quantity == 2
    assert scheduled.subscription.scheduled_change.quantity == 4
    august = (utc(2027, 8, 1), utc(2027, 9, 1))
    assert await ledger.advance(utc(2027, 8, 2)) == [
        Work(SCHEDULED_CHANGE, august[0], sub.id),
        Work(
            RENEWAL, august[0], sub.id, (fee(5000, *august), fee(5000, *august, code="seats", quantity="4"))
        ),
    ]
    assert (await ledger.get(sub.id)).quantity == 4

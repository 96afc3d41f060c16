"""The subscription engine: what each lifecycle step does and which items it owes, exactly.

Each of Tally's decisions where billing systems differ is pinned here by a test named after it
(see billing_svc/subscriptions/engine.py's docstring).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billing_svc.catalog import pricing
from billing_svc.catalog.domain import BillingInterval, IntervalUnit, PlanTerms, PlanVersion, SeatPrice
from billing_svc.subscriptions import engine
from billing_svc.subscriptions.domain import ItemKind, State, Subscription
from core.errors import FailedPrecondition
from core.money import Money

T0 = datetime(2027, 1, 15, 14, 23, 5, tzinfo=UTC)


def plan(
    *,
    plan_id: str = "plan_a",
    version: int = 1,
    base_minor: int | None = 3000,
    currency: str = "USD",
    unit: IntervalUnit = IntervalUnit.MONTH,
    count: int = 1,
    trial_days: int = 0,
    seat_price: str | None = None,
    requires_payment: bool = False,
) -> PlanVersion:
    seats = SeatPrice("Seats", pricing.PerUnit(Decimal(seat_price))) if seat_price else None
    terms = PlanTerms(
        interval=BillingInterval(unit, count),
        trial_days=trial_days,
        base_fee=Money(currency, base_minor) if base_minor is not None else None,
        seat_price=seats,
        metered_charges=(),
        minimum_spend=None,
        maximum_spend=None,
        requires_payment=requires_payment,
    )
    return PlanVersion(
        plan_id=plan_id,
        version=version,
        code=plan_id,
        display_name=f"Plan {plan_id}",
        description="",
        currency_code=currency,
        terms=terms,
        features=(),
        in_use=True,
        create_time=T0,
        update_time=T0,
        archive_time=None,
        revision=1,
    )


def start(p: PlanVersion, *, now: datetime = T0, zone: str = "UTC", quantity: int = 0) -> engine.Step:
    return engine.start(
        subscription_id="sub_1",
        account_id="acct_1",
        test_clock_id=None,
        plan=p,
        quantity=quantity,
        time_zone=zone,
        now=now,
        metadata={},
    )


def renew(
    sub: Subscription, p: PlanVersion, scheduled: PlanVersion | None = None
) -> list[tuple[str, engine.Step]]:
    due = sub.due_time
    assert due is not None
    steps, _ = engine.boundary(sub, p, scheduled, due)
    return steps


def test_a_subscription_started_mid_day_bills_its_first_period_from_local_midnight() -> None:
    step = start(plan())
    sub = step.subscription
    assert sub.current_period_start == datetime(2027, 1, 15, tzinfo=UTC)
    assert sub.current_period_end == datetime(2027, 2, 15, tzinfo=UTC)
    assert sub.state is State.ACTIVE
    assert [(i.kind, i.amount_minor, i.period_start, i.period_end) for i in step.items] == [
        (ItemKind.FEE, 3000, sub.current_period_start, sub.current_period_end)
    ]


def test_period_boundaries_are_local_midnights_in_the_subscriptions_zone() -> None:
    sub = start(plan(), zone="America/New_York").subscription
    # 14:23 UTC is 09:23 in New York (EST, UTC-5): the day began at 05:00 UTC.
    assert sub.current_period_start == datetime(2027, 1, 15, 5, tzinfo=UTC)
    assert sub.current_period_end == datetime(2027, 2, 15, 5, tzinfo=UTC)


def test_a_trial_ends_at_a_local_midnight_and_anchors_the_cycle_there() -> None:
    step = start(plan(trial_days=14))
    sub = step.subscription
    assert sub.state is State.TRIALING
    assert step.items == ()
    assert sub.trial_end_time == datetime(2027, 1, 29, tzinfo=UTC)
    assert sub.anchor_date == date(2027, 1, 29)
    [(kind, after)] = renew(sub, plan(trial_days=14))
    assert kind == "trial_end"
    assert after.subscription.state is State.ACTIVE
    assert after.subscription.current_period_start == datetime(2027, 1, 29, tzinfo=UTC)
    assert after.subscription.current_period_end == datetime(2027, 2, 28, tzinfo=UTC)
    assert [i.amount_minor for i in after.items] == [3000]


def test_a_plan_that_requires_payment_starts_incomplete_and_still_owes_its_first_fee() -> None:
    step = start(plan(requires_payment=True))
    assert step.subscription.state is State.INCOMPLETE
    assert [i.amount_minor for i in step.items] == [3000]


def test_month_end_anchor_keeps_its_day_through_renewals() -> None:
    p = plan()
    sub = start(p, now=datetime(2027, 1, 31, 8, tzinfo=UTC)).subscription
    ends = []
    for _ in range(3):
        [(_, step)] = renew(sub, p)
        sub = step.subscription
        ends.append(sub.current_period_end.date())
    assert ends == [date(2027, 3, 31), date(2027, 4, 30), date(2027, 5, 31)]


def test_an_upgrade_mid_period_credits_the_unused_old_fee_and_charges_the_rest_of_the_new() -> None:
    old, new = plan(base_minor=1000), plan(plan_id="plan_b", base_minor=2000)
    sub = start(old, now=datetime(2027, 4, 1, tzinfo=UTC)).subscription  # April: 30 days
    halfway = datetime(2027, 4, 16, tzinfo=UTC)
    step = engine.change_now(sub, old, new, 0, halfway, prorate=True)
    assert [(i.kind, i.amount_minor, i.plan_id) for i in step.items] == [
        (ItemKind.PRORATION_CREDIT, -500, "plan_a"),
        (ItemKind.PRORATION_CHARGE, 1000, "plan_b"),
    ]
    assert step.subscription.plan_id == "plan_b"
    assert step.subscription.current_period_end == sub.current_period_end  # same cycle


def test_a_change_without_prorations_makes_no_items() -> None:
    old, new = plan(base_minor=1000), plan(plan_id="plan_b", base_minor=2000)
    sub = start(old).subscription
    step = engine.change_now(sub, old, new, 0, datetime(2027, 1, 20, tzinfo=UTC), prorate=False)
    assert step.items == ()


def test_a_seat_change_prorates_only_the_seat_fee() -> None:
    p = plan(base_minor=1000, seat_price="10")
    sub = start(p, now=datetime(2027, 4, 1, tzinfo=UTC), quantity=3).subscription
    step = engine.change_now(sub, p, p, 5, datetime(2027, 4, 16, tzinfo=UTC), prorate=True)
    assert [(i.kind, i.fee_code, i.amount_minor, i.quantity) for i in step.items] == [
        (ItemKind.PRORATION_CREDIT, "seats", -1500, Decimal(3)),
        (ItemKind.PRORATION_CHARGE, "seats", 2500, Decimal(5)),
    ]


def test_a_change_to_another_interval_starts_a_new_cycle_on_the_change_day() -> None:
    monthly, yearly = plan(base_minor=1000), plan(plan_id="plan_y", base_minor=10000, unit=IntervalUnit.YEAR)
    sub = start(monthly, now=datetime(2027, 4, 1, tzinfo=UTC)).subscription
    step = engine.change_now(sub, monthly, yearly, 0, datetime(2027, 4, 16, tzinfo=UTC), prorate=True)
    after = step.subscription
    assert after.anchor_date == date(2027, 4, 16)
    assert (after.current_period_start, after.current_period_end) == (
        datetime(2027, 4, 16, tzinfo=UTC),
        datetime(2028, 4, 16, tzinfo=UTC),
    )
    assert [(i.kind, i.amount_minor) for i in step.items] == [
        (ItemKind.PRORATION_CREDIT, -500),
        (ItemKind.FEE, 10000),
    ]


def test_during_a_trial_a_change_or_cancel_prorates_nothing() -> None:
    old, new = plan(trial_days=7), plan(plan_id="plan_b", base_minor=9000, trial_days=7)
    sub = start(old).subscription
    assert engine.change_now(sub, old, new, 0, datetime(2027, 1, 17, tzinfo=UTC), prorate=True).items == ()
    assert engine.cancel_now(sub, old, datetime(2027, 1, 17, tzinfo=UTC), prorate=True).items == ()


def test_a_scheduled_change_applies_at_the_period_end_before_the_renewal_fee() -> None:
    old, new = plan(base_minor=1000), plan(plan_id="plan_b", base_minor=2000)
    sub = start(old).subscription
    scheduled = engine.schedule_change(sub, new, 0, datetime(2027, 1, 20, tzinfo=UTC)).subscription
    steps = renew(scheduled, old, new)
    assert [kind for kind, _ in steps] == ["scheduled_change", "renewal"]
    final = steps[-1][1]
    assert final.subscription.plan_id == "plan_b"
    assert final.subscription.scheduled_change is None
    assert [(i.amount_minor, i.plan_id) for i in final.items] == [(2000, "plan_b")]


def test_cancel_at_period_end_ends_the_subscription_at_the_boundary_without_a_new_fee() -> None:
    p = plan()
    sub = engine.schedule_cancel(start(p).subscription, datetime(2027, 1, 20, tzinfo=UTC)).subscription
    [(kind, step)] = renew(sub, p)
    assert kind == "cancellation"
    assert step.subscription.state is State.CANCELED
    assert step.subscription.cancel_time == datetime(2027, 2, 15, tzinfo=UTC)
    assert step.items == ()
    assert step.subscription.due_time is None


def test_uncancel_before_the_boundary_keeps_it_renewing() -> None:
    p = plan()
    canceling = engine.schedule_cancel(start(p).subscription, datetime(2027, 1, 20, tzinfo=UTC)).subscription
    kept = engine.uncancel(canceling, datetime(2027, 1, 21, tzinfo=UTC)).subscription
    [(kind, step)] = renew(kept, p)
    assert kind == "renewal"
    assert [i.amount_minor for i in step.items] == [3000]


def test_cancel_now_with_prorations_credits_the_unused_time() -> None:
    p = plan(base_minor=3000)
    sub = start(p, now=datetime(2027, 4, 1, tzinfo=UTC)).subscription
    step = engine.cancel_now(sub, p, datetime(2027, 4, 21, tzinfo=UTC), prorate=True)
    assert [(i.kind, i.amount_minor) for i in step.items] == [(ItemKind.PRORATION_CREDIT, -1000)]
    assert step.subscription.state is State.CANCELED


def test_no_fees_accrue_while_paused_across_a_renewal() -> None:
    p = plan(base_minor=3000)
    sub = start(p, now=datetime(2027, 4, 1, tzinfo=UTC)).subscription
    paused = engine.pause(sub, p, datetime(2027, 4, 21, tzinfo=UTC), prorate=True)
    assert [i.amount_minor for i in paused.items] == [-1000]  # 10 of 30 days unused
    [(kind, renewed)] = renew(paused.subscription, p)
    assert kind == "renewal"
    assert renewed.items == ()
    assert renewed.subscription.state is State.PAUSED
    assert renewed.subscription.current_period_start == datetime(2027, 5, 1, tzinfo=UTC)
    resumed = engine.resume(renewed.subscription, p, datetime(2027, 5, 11, tzinfo=UTC), prorate=True)
    # 21 of May's 31 days remain: 3000 * 21 / 31 = 2032.26 -> 2032.
    assert [(i.kind, i.amount_minor) for i in resumed.items] == [(ItemKind.PRORATION_CHARGE, 2032)]
    assert resumed.subscription.state is State.ACTIVE


@pytest.mark.parametrize(
    ("state_step", "action"),
    [
        (lambda s, p, t: engine.cancel_now(s, p, t, prorate=False).subscription, "pause"),
        (lambda s, p, t: s, "resume"),
    ],
)
def test_an_illegal_transition_is_failed_precondition_naming_the_state(state_step, action) -> None:
    p = plan()
    at = datetime(2027, 1, 20, tzinfo=UTC)
    sub = state_step(start(p).subscription, p, at)
    with pytest.raises(FailedPrecondition) as caught:
        if action == "pause":
            engine.pause(sub, p, at, prorate=True)
        else:
            engine.resume(sub, p, at, prorate=True)
    assert caught.value.reason == "INVALID_STATE"
    assert caught.value.metadata["state"] == sub.state.value


def test_jpy_and_kwd_fees_are_whole_minor_units_of_their_exponent() -> None:
    for currency, base in (("JPY", 1000), ("KWD", 12345)):
        p = plan(currency=currency, base_minor=base)
        sub = start(p, now=datetime(2027, 4, 1, tzinfo=UTC)).subscription
        step = engine.change_now(
            sub,
            p,
            plan(plan_id="b", currency=currency, base_minor=base * 3),
            0,
            datetime(2027, 4, 11, tzinfo=UTC),
            prorate=True,
        )
        # 20 of 30 days remain.
        expected_credit = -round(Decimal(base) * 20 / 30)
        assert step.items[0].amount_minor == int(expected_credit)
        assert step.items[0].currency_code == currency


def test_payment_outcomes_move_between_incomplete_active_and_past_due_only() -> None:
    at = datetime(2027, 1, 20, tzinfo=UTC)
    incomplete = start(plan(requires_payment=True)).subscription
    active = engine.activate(incomplete, at).subscription
    assert active.state is State.ACTIVE
    overdue = engine.mark_past_due(active, at).subscription
    assert overdue.state is State.PAST_DUE
    assert engine.mark_paid(overdue, at).subscription.state is State.ACTIVE
    for step in (engine.activate, engine.mark_paid):
        with pytest.raises(FailedPrecondition):
            step(active, at)
    with pytest.raises(FailedPrecondition):
        engine.mark_past_due(incomplete, at)


def test_every_transition_names_the_states_it_may_leave() -> None:
    from billing_svc.subscriptions.domain import ALLOWED, Transition

    assert set(ALLOWED) == set(Transition)
    assert all(State.CANCELED not in ALLOWED[t] for t in Transition if t is not Transition.UPDATE)


def test_unpaid_is_entered_from_past_due_only_renews_without_fees_and_a_payment_ends_it() -> None:
    p = plan()
    sub = start(p).subscription
    with pytest.raises(FailedPrecondition):
        engine.mark_unpaid(sub, T0)
    unpaid = engine.mark_unpaid(engine.mark_past_due(sub, T0).subscription, T0).subscription
    assert unpaid.state is State.UNPAID
    [(kind, step)] = renew(unpaid, p)
    assert (kind, step.subscription.state, step.items) == ("renewal", State.UNPAID, ())
    assert step.subscription.current_period_start == sub.current_period_end  # the period rolled over
    assert engine.mark_paid(step.subscription, T0).subscription.state is State.ACTIVE

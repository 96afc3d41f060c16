"""What each lifecycle step does to a subscription and which items it owes: pure functions.

Every step takes the subscription as it is, the plan version(s) it needs and the instant on the
account's billing clock, and returns a `Step`: the subscription after it and the pending invoice
items it makes (ids left empty; the use case assigns them, a preview shows them as they are).
The use cases load, lock, persist and audit; the scenarios and properties test these directly.

Tally's rules where billing systems differ (each pinned by a test in tests/unit/test_engine.py):
- Periods are whole local days in the subscription's time zone: a subscription started at 14:23
  bills its first period from that day's local midnight (billing_svc.subscriptions.periods).
- A trial ends at a local midnight (start date + trial days); the billing cycle is anchored there,
  so the first paid period starts when the trial ends and renewals keep that day of the month.
- Fees in advance (base and seats) are charged in full for each period at its start. A change,
  pause, resume or cancel with prorations credits the unused time of each old fee and charges
  the remaining time of each new one, to the second, each its own line, each rounded once.
- A change to a plan with a different billing interval starts a new cycle on the change's day
  (credit for the unused old time, a full new period charged): periods of different lengths
  cannot share an anchor.
- During a trial nothing has been paid, so a change or cancel prorates nothing.
- A paused subscription's periods keep rolling (the anchor is kept), with no fees; so do an unpaid
  one's (every retry of an overdue invoice failed: nothing more is billed until it is paid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from billing_svc.catalog import pricing
from billing_svc.catalog.domain import BillingInterval, PlanVersion
from billing_svc.subscriptions import periods, proration
from billing_svc.subscriptions.domain import (
    ItemKind,
    PendingItem,
    ScheduledChange,
    State,
    Subscription,
    Transition,
    require,
)
from billing_svc.subscriptions.periods import Cycle, Interval, IntervalUnit, Period
from core import currencies
from core.money import to_minor_units

BASE_FEE = "base"
SEAT_FEE = "seats"
TRIAL_INDEX = -1


@dataclass(frozen=True)
class Step:
    subscription: Subscription
    items: tuple[PendingItem, ...] = ()


def interval_of(plan: PlanVersion) -> Interval:
    terms = plan.terms.interval
    return Interval(IntervalUnit(terms.unit.value), terms.count)


def cycle_of(subscription: Subscription, plan: PlanVersion) -> Cycle:
    zone = periods.zone_named(subscription.billing_time_zone, field="billing_time_zone")
    return Cycle(anchor=subscription.anchor_date, zone=zone, interval=interval_of(plan))


def current_period(subscription: Subscription) -> Period:
    return Period(
        start=subscription.current_period_start,
        end=subscription.current_period_end,
        index=max(subscription.period_index, 0),
    )


def fees_for(plan: PlanVersion, quantity: int) -> list[proration.Fee]:
    """The in-advance fees of one whole period at this quantity, exact, in major units."""
    fees = []
    base = plan.terms.base_fee
    if base is not None and base.amount_minor:
        amount = Decimal(base.amount_minor).scaleb(-currencies.exponent(base.currency_code))
        fees.append(proration.Fee(BASE_FEE, plan.display_name, amount, Decimal(1)))
    seat = plan.terms.seat_price
    if seat is not None and quantity > 0:
        amount = pricing.amount_for(seat.price, Decimal(quantity))  # type: ignore[arg-type]
        description = seat.description or f"{plan.display_name} seats"
        fees.append(proration.Fee(SEAT_FEE, description, amount, Decimal(quantity)))
    return fees


def _item(
    subscription: Subscription,
    plan: PlanVersion,
    *,
    kind: ItemKind,
    fee: proration.Fee | None = None,
    line: proration.ProrationLine | None = None,
    period: Period | None = None,
    now: datetime,
) -> PendingItem:
    if line is not None:
        start, end, amount = line.start, line.end, line.amount_minor
        code, description, quantity = line.fee_code, line.description, line.quantity
        details = {"fraction": f"{line.fraction.numerator}/{line.fraction.denominator}"}
    else:
        assert fee is not None
        assert period is not None
        start, end = period.start, period.end
        amount = to_minor_units(fee.amount, plan.currency_code)
        code, description, quantity = fee.code, fee.description, fee.quantity
        details = {}
    return PendingItem(
        id="",
        account_id=subscription.account_id,
        subscription_id=subscription.id,
        kind=kind,
        fee_code=code,
        description=description,
        currency_code=plan.currency_code,
        amount_minor=amount,
        quantity=quantity,
        period_start=start,
        period_end=end,
        plan_id=plan.plan_id,
        plan_version=plan.version,
        create_time=now,
        details=details,
    )


def period_fee_items(
    subscription: Subscription, plan: PlanVersion, period: Period, now: datetime
) -> tuple[PendingItem, ...]:
    return tuple(
        _item(subscription, plan, kind=ItemKind.FEE, fee=fee, period=period, now=now)
        for fee in fees_for(plan, subscription.quantity)
        if to_minor_units(fee.amount, plan.currency_code) != 0
    )


def _proration_items(
    subscription: Subscription,
    old: tuple[PlanVersion, int] | None,
    new: tuple[PlanVersion, int] | None,
    now: datetime,
) -> tuple[PendingItem, ...]:
    """Credits for the unused time of `old`'s fees and charges for the rest of `new`'s.

    The use cases bring a subscription up to its account's time first (use_cases.load_current),
    so `now` lies in the current period; a step outside it would prorate against the wrong
    period, which is a bug, not nothing to prorate.
    """
    period = current_period(subscription)
    if not period.start <= now < period.end:
        raise ValueError(f"{now.isoformat()} is outside the current period of {subscription.id}")
    old_plan = old[0] if old else None
    new_plan = new[0] if new else None
    either = old_plan or new_plan
    assert either is not None, "a proration needs an old or a new side"
    lines = proration.change_lines(
        fees_for(*old) if old else [], fees_for(*new) if new else [], period, now, either.currency_code
    )
    items = []
    for line in lines:
        if line.kind == "credit":
            plan, kind = old_plan or either, ItemKind.PRORATION_CREDIT
        else:
            plan, kind = new_plan or either, ItemKind.PRORATION_CHARGE
        items.append(_item(subscription, plan, kind=kind, line=line, now=now))
    return tuple(items)


def start(
    *,
    subscription_id: str,
    account_id: str,
    test_clock_id: str | None,
    plan: PlanVersion,
    quantity: int,
    time_zone: str,
    now: datetime,
    metadata: dict[str, str],
) -> Step:
    zone = periods.zone_named(time_zone, field="billing_time_zone")
    today = periods.local_date(now, zone)
    trial_days = plan.terms.trial_days
    if trial_days > 0:
        trial_end = periods.trial_end(now, trial_days, zone)
        anchor = periods.local_date(trial_end, zone)
        state, index = State.TRIALING, TRIAL_INDEX
        first = Period(start=periods.day_start(today, zone), end=trial_end, index=0)
    else:
        trial_end, anchor = None, today
        state = State.INCOMPLETE if plan.terms.requires_payment else State.ACTIVE
        index = 0
        first = Cycle(anchor=anchor, zone=zone, interval=interval_of(plan)).period(0)
    subscription = Subscription(
        id=subscription_id,
        account_id=account_id,
        test_clock_id=test_clock_id,
        plan_id=plan.plan_id,
        plan_version=plan.version,
        quantity=quantity,
        state=state,
        billing_time_zone=time_zone,
        anchor_date=anchor,
        start_time=now,
        trial_end_time=trial_end,
        period_index=index,
        current_period_start=first.start,
        current_period_end=first.end,
        cancel_at_period_end=False,
        cancel_time=None,
        pause_time=None,
        scheduled_change=None,
        metadata=metadata,
        create_time=now,
        update_time=now,
        revision=1,
    )
    items = () if state is State.TRIALING else period_fee_items(subscription, plan, first, now)
    return Step(subscription, items)


def _touch(subscription: Subscription, now: datetime, **changes: object) -> Subscription:
    return replace(subscription, update_time=now, revision=subscription.revision + 1, **changes)  # type: ignore[arg-type]


def _same_interval(a: BillingInterval, b: BillingInterval) -> bool:
    return a.unit == b.unit and a.count == b.count


def _enter_period(subscription: Subscription, plan: PlanVersion, index: int, now: datetime) -> Subscription:
    period = cycle_of(subscription, plan).period(index)
    return _touch(
        subscription,
        now,
        period_index=index,
        current_period_start=period.start,
        current_period_end=period.end,
    )


def _restart_cycle(subscription: Subscription, plan: PlanVersion, at: datetime) -> Subscription:
    """A new cycle anchored on `at`'s local day, index 0 (an interval change)."""
    zone = periods.zone_named(subscription.billing_time_zone, field="billing_time_zone")
    anchored = replace(subscription, anchor_date=periods.local_date(at, zone))
    return _enter_period(anchored, plan, 0, at)


def boundary(
    subscription: Subscription, plan: PlanVersion, scheduled_plan: PlanVersion | None, at: datetime
) -> tuple[list[tuple[str, Step]], PlanVersion]:
    """The work due at `at` (the trial's or the period's end), as (kind, step) in order.

    Kinds are "cancellation", "scheduled_change", "trial_end" and "renewal". Returns the plan
    version the subscription is on afterwards.
    """
    steps: list[tuple[str, Step]] = []
    if subscription.cancel_at_period_end:
        canceled = _touch(subscription, at, state=State.CANCELED, cancel_time=at, cancel_at_period_end=False)
        return [("cancellation", Step(canceled))], plan
    current, interval_changed = subscription, False
    if current.scheduled_change is not None:
        assert scheduled_plan is not None
        change = current.scheduled_change
        interval_changed = not _same_interval(plan.terms.interval, scheduled_plan.terms.interval)
        current = _touch(
            current,
            at,
            plan_id=change.plan_id,
            plan_version=change.plan_version,
            quantity=change.quantity,
            scheduled_change=None,
        )
        plan = scheduled_plan
        steps.append(("scheduled_change", Step(current)))
    if current.state is State.TRIALING:
        require(current, Transition.END_TRIAL)
        current = _touch(current, at, state=State.ACTIVE)
        kind = "trial_end"
        current = _enter_period(current, plan, 0, at)
    else:
        require(current, Transition.RENEW)
        kind = "renewal"
        if interval_changed:
            current = _restart_cycle(current, plan, at)
        else:
            current = _enter_period(current, plan, current.period_index + 1, at)
    items = (
        ()
        if current.state in (State.PAUSED, State.UNPAID)
        else period_fee_items(current, plan, current_period(current), at)
    )
    steps.append((kind, Step(current, items)))
    return steps, plan


def change_now(
    subscription: Subscription,
    old_plan: PlanVersion,
    new_plan: PlanVersion,
    quantity: int,
    now: datetime,
    *,
    prorate: bool,
) -> Step:
    require(subscription, Transition.CHANGE)
    changed = _touch(
        subscription, now, plan_id=new_plan.plan_id, plan_version=new_plan.version, quantity=quantity
    )
    if subscription.state is State.TRIALING:
        return Step(changed)  # nothing was paid; the trial continues on the new plan
    items: tuple[PendingItem, ...] = ()
    if not _same_interval(old_plan.terms.interval, new_plan.terms.interval):
        if prorate:
            items = _proration_items(subscription, (old_plan, subscription.quantity), None, now)
        changed = _restart_cycle(changed, new_plan, now)
        return Step(changed, items + period_fee_items(changed, new_plan, current_period(changed), now))
    if prorate:
        items = _proration_items(subscription, (old_plan, subscription.quantity), (new_plan, quantity), now)
    return Step(changed, items)


def schedule_change(subscription: Subscription, new_plan: PlanVersion, quantity: int, now: datetime) -> Step:
    require(subscription, Transition.SCHEDULE_CHANGE)
    change = ScheduledChange(plan_id=new_plan.plan_id, plan_version=new_plan.version, quantity=quantity)
    return Step(_touch(subscription, now, scheduled_change=change))


def cancel_now(subscription: Subscription, plan: PlanVersion, now: datetime, *, prorate: bool) -> Step:
    require(subscription, Transition.CANCEL)
    items: tuple[PendingItem, ...] = ()
    if prorate and subscription.state in (State.ACTIVE, State.PAST_DUE):
        items = _proration_items(subscription, (plan, subscription.quantity), None, now)
    canceled = _touch(
        subscription,
        now,
        state=State.CANCELED,
        cancel_time=now,
        cancel_at_period_end=False,
        scheduled_change=None,
        pause_time=None,
    )
    return Step(canceled, items)


def schedule_cancel(subscription: Subscription, now: datetime) -> Step:
    require(subscription, Transition.SCHEDULE_CANCEL)
    if subscription.cancel_at_period_end:
        return Step(subscription)
    return Step(_touch(subscription, now, cancel_at_period_end=True))


def uncancel(subscription: Subscription, now: datetime) -> Step:
    require(subscription, Transition.UNCANCEL)
    return Step(_touch(subscription, now, cancel_at_period_end=False))


def pause(subscription: Subscription, plan: PlanVersion, now: datetime, *, prorate: bool) -> Step:
    require(subscription, Transition.PAUSE)
    items = _proration_items(subscription, (plan, subscription.quantity), None, now) if prorate else ()
    return Step(_touch(subscription, now, state=State.PAUSED, pause_time=now), items)


def resume(subscription: Subscription, plan: PlanVersion, now: datetime, *, prorate: bool) -> Step:
    require(subscription, Transition.RESUME)
    resumed = _touch(subscription, now, state=State.ACTIVE, pause_time=None)
    items = _proration_items(resumed, None, (plan, subscription.quantity), now) if prorate else ()
    return Step(resumed, items)


def total_minor(items: Sequence[PendingItem]) -> int:
    return sum(item.amount_minor for item in items)


def replace_scheduled(subscription: Subscription, now: datetime) -> Subscription:
    """The subscription with its scheduled change dropped."""
    return _touch(subscription, now, scheduled_change=None)


# Payment outcomes (invoicing and payments call these): state changes only, no items.


def activate(subscription: Subscription, now: datetime) -> Step:
    """The first payment of an incomplete subscription succeeded."""
    require(subscription, Transition.ACTIVATE)
    return Step(_touch(subscription, now, state=State.ACTIVE))


def mark_past_due(subscription: Subscription, now: datetime) -> Step:
    """A payment failed: still billed and entitled while it is retried."""
    require(subscription, Transition.MARK_PAST_DUE)
    return Step(_touch(subscription, now, state=State.PAST_DUE))


def mark_unpaid(subscription: Subscription, now: datetime) -> Step:
    """Every retry of an overdue invoice failed, and the dunning end state is `unpaid`."""
    require(subscription, Transition.MARK_UNPAID)
    return Step(_touch(subscription, now, state=State.UNPAID))


def mark_paid(subscription: Subscription, now: datetime) -> Step:
    """The overdue payment came in (past due or unpaid: active again)."""
    require(subscription, Transition.MARK_PAID)
    return Step(_touch(subscription, now, state=State.ACTIVE))

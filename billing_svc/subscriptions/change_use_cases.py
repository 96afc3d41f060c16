"""Changing a subscription's plan or seat quantity: now with prorations, at the period end, or a preview.

PreviewChange runs the very computation ChangeSubscription runs, in a read-only transaction, and
returns its result instead of writing it: the preview is the change, not an estimate of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from billing_svc.catalog.cache_keys import plan_generation
from billing_svc.catalog.domain import PlanVersion
from billing_svc.subscriptions import engine
from billing_svc.subscriptions.domain import Subscription
from billing_svc.subscriptions.meters import charged_meters, require_meters_free
from billing_svc.subscriptions.recording import record
from billing_svc.subscriptions.unit_of_work import SubscriptionsUnitOfWork
from billing_svc.subscriptions.use_cases import (
    ChangeResult,
    SubscriptionDeps,
    check_quantity,
    load_current,
    plan_of,
    require_id,
    subscribable_plan,
)
from core.errors import FailedPrecondition, InvalidArgument
from core.principal import Caller


class Timing(StrEnum):
    IMMEDIATELY = "immediately"
    PERIOD_END = "period_end"


@dataclass(frozen=True)
class ChangeSubscription:
    id: str
    plan_id: str  # "" keeps the plan
    quantity: int | None  # None keeps the quantity
    timing: Timing
    prorate: bool
    etag: str


@dataclass(frozen=True)
class CancelScheduledChange:
    id: str


async def _target(
    uow: SubscriptionsUnitOfWork, command: ChangeSubscription, current_plan: PlanVersion, quantity: int
) -> tuple[PlanVersion, int]:
    if command.plan_id:
        plan = await subscribable_plan(uow, command.plan_id, current_plan.currency_code, "plan_id")
    else:
        plan = current_plan
    wanted = quantity if command.quantity is None else command.quantity
    if command.quantity is None and plan.terms.seat_price is None:
        wanted = 0  # moving to a plan without seats drops them
    return plan, check_quantity(plan, wanted, "quantity")


@dataclass(frozen=True)
class _Computed:
    step: engine.Step
    action: str
    before: Subscription
    plan: PlanVersion
    now: datetime


async def _compute(
    deps: SubscriptionDeps,
    uow: SubscriptionsUnitOfWork,
    caller: Caller,
    command: ChangeSubscription,
    *,
    write: bool = True,
) -> _Computed:
    current, now = await load_current(deps, uow, caller, command.id, etag=command.etag, write=write)
    current_plan = await plan_of(uow, current)
    plan, quantity = await _target(uow, command, current_plan, current.quantity)
    if (plan.plan_id, plan.version, quantity) == (current.plan_id, current.plan_version, current.quantity):
        raise InvalidArgument.field(
            "plan_id" if command.plan_id else "quantity",
            "changes nothing: the subscription is already on this plan version and quantity",
        )
    if plan.plan_id != current.plan_id or plan.version != current.plan_version:
        if write and charged_meters(plan):  # against a concurrent subscription to the same meter
            await uow.accounts.terms(current.account_id, lock=True, exclusive=True)
        await require_meters_free(uow, current.account_id, plan, now, field="plan_id", excluding=current.id)
    if command.timing is Timing.PERIOD_END:
        step = engine.schedule_change(current, plan, quantity, now)
        return _Computed(step, "change_scheduled", current, plan, now)
    step = engine.change_now(current, current_plan, plan, quantity, now, prorate=command.prorate)
    return _Computed(step, "changed", current, plan, now)


async def change_subscription(
    deps: SubscriptionDeps, caller: Caller, command: ChangeSubscription
) -> ChangeResult:
    require_id(command.id)

    async def action(uow: SubscriptionsUnitOfWork) -> ChangeResult:
        computed = await _compute(deps, uow, caller, command)
        await uow.plans.mark_in_use(computed.plan.plan_id, computed.plan.version)
        uow.invalidate_after_commit(plan_generation(computed.plan.plan_id))  # GetPlan shows in_use
        written = await record(
            uow, caller, before=computed.before, step=computed.step, action=computed.action, at=computed.now
        )
        return ChangeResult(written.subscription, written.items)

    return (await deps.change_runner.run(caller, command, action)).value


async def preview_change(deps: SubscriptionDeps, caller: Caller, command: ChangeSubscription) -> ChangeResult:
    """What change_subscription would return now, items without ids; nothing is written."""
    require_id(command.id)
    async with deps.new_reader() as uow:
        computed = await _compute(deps, uow, caller, command, write=False)
    return ChangeResult(computed.step.subscription, computed.step.items)


async def cancel_scheduled_change(
    deps: SubscriptionDeps, caller: Caller, subscription_id: str
) -> ChangeResult:
    require_id(subscription_id)
    command = CancelScheduledChange(subscription_id)

    async def action(uow: SubscriptionsUnitOfWork) -> ChangeResult:
        current, now = await load_current(deps, uow, caller, command.id)
        if current.scheduled_change is None:
            raise FailedPrecondition(
                "no change is scheduled for this subscription",
                reason="NO_SCHEDULED_CHANGE",
                metadata={"id": current.id},
            )
        dropped = engine.Step(
            engine.replace_scheduled(current, now),
        )
        written = await record(
            uow, caller, before=current, step=dropped, action="scheduled_change_canceled", at=now
        )
        return ChangeResult(written.subscription, ())

    return (await deps.change_runner.run(caller, command, action)).value

"""Due billing work of one subscription: trial ends, renewals, scheduled changes, period-end cancels.

`run_due_work` is what the billing worker runs for a claimed subscription and what
AdvanceTestClock runs at each due time on a test clock: everything due at or before `now`,
each boundary at its own time, in order, inside the caller's transaction (it does not commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from billing_svc.catalog.domain import PlanVersion
from billing_svc.subscriptions import engine
from billing_svc.subscriptions.domain import State, Subscription
from billing_svc.subscriptions.recording import record
from billing_svc.subscriptions.unit_of_work import SubscriptionsUnitOfWork
from core.principal import SYSTEM, Caller

# One call never does more than this many boundaries (a daily plan ten years overdue).
MAX_BOUNDARIES = 5000


class WorkKind(StrEnum):
    TRIAL_END = "trial_end"
    RENEWAL = "renewal"
    SCHEDULED_CHANGE = "scheduled_change"
    CANCELLATION = "cancellation"


_ACTIONS = {
    WorkKind.TRIAL_END: "trial_ended",
    WorkKind.RENEWAL: "renewed",
    WorkKind.SCHEDULED_CHANGE: "scheduled_change_applied",
    WorkKind.CANCELLATION: "canceled",
}


@dataclass(frozen=True)
class ClosedPeriod:
    """The period a renewal or a period-end cancel closed, with the plan version it was billed
    by (one that bills usage): what its invoice bills usage for, in arrears."""

    plan_id: str
    plan_version: int
    start: datetime
    end: datetime
    # The plan bills no usage of its own (no metered charge, no minimum): the period bills only
    # records with their own price on meters no subscription charges, when it has any
    # (billing_svc.usage.period_usage).
    recorded_only: bool = False


# The states whose period's usage is billed when it closes (not a trial, a pause or an unpaid start).
USAGE_STATES = frozenset({State.ACTIVE, State.PAST_DUE})


@dataclass(frozen=True)
class WorkDone:
    kind: WorkKind
    due_time: datetime
    account_id: str
    subscription_id: str
    item_ids: tuple[str, ...]
    closed: ClosedPeriod | None = None


def closed_period(
    kind: WorkKind, before: Subscription, plan: PlanVersion, due: datetime
) -> ClosedPeriod | None:
    """What the boundary's invoice bills in arrears, from the subscription as it was before it and
    the plan version it was on. A plan that bills no usage (no metered charge, no minimum) still
    closes one, `recorded_only`: records with their own price may be its to bill."""
    if kind not in (WorkKind.RENEWAL, WorkKind.CANCELLATION) or before.state not in USAGE_STATES:
        return None
    recorded_only = not plan.terms.metered_charges and plan.terms.minimum_spend is None
    # The first period starts at the local midnight before the subscription did; its usage from
    # the start only: what came before it is another subscription's (or nobody's) to bill.
    start = max(before.current_period_start, before.start_time)
    if not start < due:
        return None
    return ClosedPeriod(before.plan_id, before.plan_version, start, due, recorded_only)


async def _plan(uow: SubscriptionsUnitOfWork, plan_id: str, version: int) -> PlanVersion:
    plan = await uow.plans.version(plan_id, version)
    if plan is None:  # plan versions are never deleted; a missing one is corrupt data
        raise LookupError(f"plan {plan_id} version {version} is missing")
    return plan


async def _boundary_steps(
    uow: SubscriptionsUnitOfWork, subscription: Subscription, due: datetime
) -> tuple[list[tuple[str, engine.Step]], PlanVersion]:
    """The boundary's steps, and the plan version of the period it closes."""
    plan = await _plan(uow, subscription.plan_id, subscription.plan_version)
    scheduled = subscription.scheduled_change
    scheduled_plan = None
    if scheduled is not None:
        scheduled_plan = await _plan(uow, scheduled.plan_id, scheduled.plan_version)
    steps, _ = engine.boundary(subscription, plan, scheduled_plan, due)
    return steps, plan


async def caught_up(uow: SubscriptionsUnitOfWork, subscription: Subscription, now: datetime) -> Subscription:
    """The subscription as its due work up to `now` would leave it, computed and not written:
    what a preview starts from when the worker has not yet run a boundary that has passed."""
    for _ in range(MAX_BOUNDARIES):
        due = subscription.due_time
        if due is None or due > now:
            break
        subscription = (await _boundary_steps(uow, subscription, due))[0][-1][1].subscription
    return subscription


async def run_due_work(
    uow: SubscriptionsUnitOfWork, subscription_id: str, now: datetime, *, caller: Caller = SYSTEM
) -> list[WorkDone]:
    subscription = await uow.subscriptions.get(subscription_id, for_update=True)
    done: list[WorkDone] = []
    while subscription is not None and len(done) < MAX_BOUNDARIES:
        due = subscription.due_time
        if due is None or due > now:
            break
        steps, closing_plan = await _boundary_steps(uow, subscription, due)
        before = subscription
        for kind_name, step in steps:
            kind = WorkKind(kind_name)
            written = await record(uow, caller, before=before, step=step, action=_ACTIONS[kind], at=due)
            before = written.subscription
            done.append(
                WorkDone(
                    kind=kind,
                    due_time=due,
                    account_id=before.account_id,
                    subscription_id=before.id,
                    item_ids=tuple(item.id for item in written.items),
                    closed=closed_period(kind, subscription, closing_plan, due),
                )
            )
        subscription = before
    return done


class BoundaryWork(Protocol):
    """What the subscription use cases run at a boundary: the due work a change catches up on first
    (`run_due_work`) and what follows a subscription's start (`started`). The billing module's
    BillingWork invoices both in the same transaction; `WithoutInvoices` only runs the work."""

    async def run_due_work(
        self, uow: SubscriptionsUnitOfWork, subscription_id: str, now: datetime, *, caller: Caller
    ) -> Sequence[WorkDone]: ...

    async def started(
        self, uow: SubscriptionsUnitOfWork, caller: Caller, subscription: Subscription
    ) -> None: ...

    async def canceled_now(
        self,
        uow: SubscriptionsUnitOfWork,
        caller: Caller,
        before: Subscription,
        plan: PlanVersion,
        at: datetime,
    ) -> None:
        """A cancel now asked to invoice at once: `before` is the subscription as it was, on `plan`."""
        ...


class WithoutInvoices:
    async def run_due_work(
        self, uow: SubscriptionsUnitOfWork, subscription_id: str, now: datetime, *, caller: Caller
    ) -> Sequence[WorkDone]:
        return await run_due_work(uow, subscription_id, now, caller=caller)

    async def started(self, uow: SubscriptionsUnitOfWork, caller: Caller, subscription: Subscription) -> None:
        return None

    async def canceled_now(
        self,
        uow: SubscriptionsUnitOfWork,
        caller: Caller,
        before: Subscription,
        plan: PlanVersion,
        at: datetime,
    ) -> None:
        return None

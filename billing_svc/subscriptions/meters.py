"""One meter, one subscription: usage is billed by at most one subscription of an account.

Usage is recorded per account and meter, not per subscription, and a cycle invoice bills the
account's usage of the period it closes for each meter its plan charges. Two subscriptions of one
account whose plans charge the same meter would bill the same usage twice. So a subscription may
come to charge a meter (CreateSubscription, ChangeSubscription now or at the period end) only while
no other subscription of its account that has not ended charges it: FAILED_PRECONDITION
(METER_ALREADY_CHARGED) naming the meter and the other subscription.

A subscription has not ended until it is canceled, or, canceled at the period end, until that
period ends (the usage of that last period is on its final invoice; the new subscription's starts
at or after it). It charges the meters of its plan and of the plan of a change scheduled on it, so
the worker applying that change later cannot make an overlap either. Plans without metered charges
are never refused: two flat plans on one account are fine.

The caller holds the account's row lock (exclusive on PostgreSQL; SQLite has one writer), so two
requests for one account cannot both see the meter free.
"""

from __future__ import annotations

from datetime import datetime

from billing_svc.catalog.domain import MeteredCharge, PlanVersion
from billing_svc.subscriptions.domain import State, Subscription
from billing_svc.subscriptions.unit_of_work import SubscriptionsUnitOfWork
from core.errors import FailedPrecondition


def charged_meters(plan: PlanVersion) -> frozenset[str]:
    return frozenset(charge.meter_id for charge in plan.terms.metered_charges)


def has_ended(subscription: Subscription, now: datetime) -> bool:
    if subscription.state is State.CANCELED:
        return True
    return subscription.cancel_at_period_end and subscription.current_period_end <= now


async def _meters_of(uow: SubscriptionsUnitOfWork, subscription: Subscription) -> frozenset[str]:
    """The meters its plan charges, and those of the plan of the change scheduled on it."""
    versions = [(subscription.plan_id, subscription.plan_version)]
    if subscription.scheduled_change is not None:
        versions.append((subscription.scheduled_change.plan_id, subscription.scheduled_change.plan_version))
    meters: frozenset[str] = frozenset()
    for plan_id, version in versions:
        plan = await uow.plans.version(plan_id, version)
        if plan is None:  # plan versions are never deleted; a missing one is corrupt data
            raise LookupError(f"plan {plan_id} v{version} is missing")
        meters |= charged_meters(plan)
    return meters


def meter_taken(
    charge: MeteredCharge, plan: PlanVersion, other: Subscription, field: str
) -> FailedPrecondition:
    return FailedPrecondition(
        f"plan {plan.code!r} charges meter {charge.meter_id} ({charge.description!r}), which subscription"
        f" {other.id} of this account already charges: usage is billed by one subscription per meter;"
        " cancel that subscription, or change it to a plan without this meter, first",
        reason="METER_ALREADY_CHARGED",
        metadata={
            "field": field,
            "meter_id": charge.meter_id,
            "plan_id": plan.plan_id,
            "subscription_id": other.id,
        },
    )


async def require_meters_free(
    uow: SubscriptionsUnitOfWork,
    account_id: str,
    plan: PlanVersion,
    now: datetime,
    *,
    field: str,
    excluding: str = "",
) -> None:
    """Refuse `plan` for a subscription of `account_id` (other than `excluding`, the one changing)
    when a meter it charges is charged by another subscription of the account that has not ended."""
    wanted = charged_meters(plan)
    if not wanted:
        return
    for other in await uow.subscriptions.not_canceled(account_id):
        if other.id == excluding or has_ended(other, now):
            continue
        taken = wanted & await _meters_of(uow, other)
        if taken:
            charge = next(charge for charge in plan.terms.metered_charges if charge.meter_id in taken)
            raise meter_taken(charge, plan, other, field)

"""Writing a step down: the subscription, its phase, its items (with ids), the audit row and the event.

Every use case and every piece of due work ends here, so each change is audited and emitted the
same way, in the transaction that makes it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from billing_svc.catalog.cache_keys import entitlements_generation
from billing_svc.subscriptions.domain import ITEM_ID_PREFIX, PendingItem, Subscription
from billing_svc.subscriptions.engine import Step
from billing_svc.subscriptions.unit_of_work import SubscriptionsUnitOfWork
from core import ids
from core.audit import changes_between
from core.principal import Caller

_AUDITED = (
    "plan_id",
    "plan_version",
    "quantity",
    "state",
    "period_index",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "cancel_time",
    "pause_time",
    "scheduled_change",
    "metadata",
)


def _view(subscription: Subscription | None) -> dict[str, Any] | None:
    if subscription is None:
        return None
    data = subscription.to_dict()
    return {name: data[name] for name in _AUDITED}


def event_payload(subscription: Subscription, items: tuple[PendingItem, ...]) -> dict[str, Any]:
    return {
        "id": subscription.id,
        "account_id": subscription.account_id,
        "plan_id": subscription.plan_id,
        "plan_version": subscription.plan_version,
        "quantity": subscription.quantity,
        "state": subscription.state.value,
        "current_period_start": subscription.current_period_start.isoformat(),
        "current_period_end": subscription.current_period_end.isoformat(),
        "pending_invoice_item_ids": [item.id for item in items],
    }


async def record(
    uow: SubscriptionsUnitOfWork,
    caller: Caller,
    *,
    before: Subscription | None,
    step: Step,
    action: str,
    at: datetime,
    phase_changed: bool = False,
) -> Step:
    """Persist `step` (made from `before`, None for a new subscription); returns it with item ids."""
    after = step.subscription
    # Items share their create_time (the step's instant) and are listed by (create_time, id):
    # ordered ids keep them in the order the step made them (credits, then charges).
    items = tuple(replace(item, id=ids.new_ordered_id(ITEM_ID_PREFIX, at)) for item in step.items)
    if before is None:
        await uow.subscriptions.add(after)
    else:
        await uow.subscriptions.save(after)
    if before is None or phase_changed or _phase_key(before) != _phase_key(after):
        await uow.subscriptions.record_phase(after, at)
    await uow.items.add_all(items)
    # Whatever the step, the account's entitlements may have changed with it.
    uow.invalidate_after_commit(entitlements_generation(after.account_id))
    await uow.audit.record(
        caller,
        time=at,
        resource_type="subscription",
        resource_id=after.id,
        action=action,
        changes={
            **changes_between(_view(before), _view(after)),
            **({"pending_invoice_item_ids": [item.id for item in items]} if items else {}),
        },
    )
    uow.emit(f"subscription.{action}", ("subscription", after.id), event_payload(after, items))
    return Step(after, items)


def _phase_key(subscription: Subscription) -> tuple[object, ...]:
    return (subscription.plan_id, subscription.plan_version, subscription.quantity, subscription.state)

"""Subscriptions as values: states, the legal transitions, and pending invoice items. No I/O.

The states and who may leave them (every transition is named here and checked by `require`):

    created   -> trialing (the plan has a trial) | incomplete (it wants a first payment) | active
    trialing  -> active at the trial's end, or canceled
    active    -> past_due (a payment failed), paused, canceled
    past_due  -> active (paid), paused, canceled, unpaid (every retry failed, dunning_end_state)
    unpaid    -> active (paid), canceled; periods roll over without fees, no features
    paused    -> active (resumed), canceled
    incomplete-> active (first payment), canceled
    canceled  -> nothing: final

An illegal transition is FAILED_PRECONDITION (INVALID_STATE) naming the current state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from core.errors import FailedPrecondition

ID_PREFIX = "sub"
ITEM_ID_PREFIX = "pii"
MAX_QUANTITY = 1_000_000
# Fields of the Subscription message only the server sets: an update mask naming them is not
# refused, they are left alone (AIP-203). `etag` is a precondition, never a change.
OUTPUT_ONLY_FIELDS = frozenset(
    {
        "id",
        "plan_version",
        "state",
        "billing_time_zone",
        "billing_cycle_anchor",
        "start_time",
        "trial_end_time",
        "current_period_start",
        "current_period_end",
        "cancel_at_period_end",
        "cancel_time",
        "pause_time",
        "scheduled_change",
        "create_time",
        "update_time",
        "etag",
    }
)


class State(StrEnum):
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    PAUSED = "paused"
    CANCELED = "canceled"
    INCOMPLETE = "incomplete"
    UNPAID = "unpaid"


class Transition(StrEnum):
    END_TRIAL = "end_trial"
    RENEW = "renew"
    CHANGE = "change"
    SCHEDULE_CHANGE = "schedule_change"
    CANCEL = "cancel"
    SCHEDULE_CANCEL = "schedule_cancel"
    UNCANCEL = "uncancel"
    PAUSE = "pause"
    RESUME = "resume"
    MARK_PAST_DUE = "mark_past_due"
    MARK_PAID = "mark_paid"
    MARK_UNPAID = "mark_unpaid"
    ACTIVATE = "activate"
    UPDATE = "update"


_LIVE = frozenset(State) - {State.CANCELED}
ALLOWED: Mapping[Transition, frozenset[State]] = {
    Transition.END_TRIAL: frozenset({State.TRIALING}),
    # A paused subscription's periods still roll over (no fees), so the anchor is kept.
    Transition.RENEW: frozenset({State.ACTIVE, State.PAST_DUE, State.PAUSED, State.INCOMPLETE, State.UNPAID}),
    Transition.CHANGE: frozenset({State.TRIALING, State.ACTIVE, State.PAST_DUE}),
    Transition.SCHEDULE_CHANGE: frozenset({State.TRIALING, State.ACTIVE, State.PAST_DUE}),
    Transition.CANCEL: _LIVE,
    Transition.SCHEDULE_CANCEL: _LIVE,
    Transition.UNCANCEL: _LIVE,
    Transition.PAUSE: frozenset({State.ACTIVE, State.PAST_DUE}),
    Transition.RESUME: frozenset({State.PAUSED}),
    Transition.MARK_PAST_DUE: frozenset({State.ACTIVE}),
    Transition.MARK_PAID: frozenset({State.PAST_DUE, State.UNPAID}),
    Transition.MARK_UNPAID: frozenset({State.PAST_DUE}),
    Transition.ACTIVATE: frozenset({State.INCOMPLETE}),
    Transition.UPDATE: frozenset(State),
}

# States whose plan features the account has (GetEntitlements).
ENTITLED = frozenset({State.TRIALING, State.ACTIVE, State.PAST_DUE})


def require(subscription: Subscription, transition: Transition) -> None:
    if subscription.state not in ALLOWED[transition]:
        raise FailedPrecondition(
            f"cannot {transition.value.replace('_', ' ')} a subscription that is {subscription.state.value}",
            reason="INVALID_STATE",
            metadata={"id": subscription.id, "state": subscription.state.value, "action": transition.value},
        )


@dataclass(frozen=True)
class ScheduledChange:
    plan_id: str
    plan_version: int
    quantity: int


@dataclass(frozen=True)
class Subscription:
    id: str
    account_id: str
    test_clock_id: str | None
    plan_id: str
    plan_version: int
    quantity: int
    state: State
    billing_time_zone: str
    anchor_date: date
    start_time: datetime
    trial_end_time: datetime | None
    period_index: int  # -1 during the trial
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    cancel_time: datetime | None
    pause_time: datetime | None
    scheduled_change: ScheduledChange | None
    metadata: Mapping[str, str]
    create_time: datetime
    update_time: datetime
    revision: int

    @property
    def etag(self) -> str:
        return hashlib.sha256(f"{self.id}:{self.revision}".encode()).hexdigest()[:20]

    @property
    def due_time(self) -> datetime | None:
        """When its next piece of work falls due: the trial's end or the period's end."""
        if self.state is State.CANCELED:
            return None
        if self.state is State.TRIALING:
            return self.trial_end_time
        return self.current_period_end

    def to_dict(self) -> dict[str, Any]:
        # Field by field rather than `asdict`, whose deep copy of every value cost more than the
        # rest of an audit row on the billing worker's path.
        data: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            data[name] = value.isoformat() if isinstance(value, datetime | date) else value
        data["state"] = self.state.value
        data["metadata"] = dict(self.metadata)
        change = self.scheduled_change
        data["scheduled_change"] = asdict(change) if change is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Subscription:
        def when(name: str) -> datetime | None:
            value = data[name]
            return datetime.fromisoformat(value) if value is not None else None

        scheduled = data["scheduled_change"]
        return cls(
            id=data["id"],
            account_id=data["account_id"],
            test_clock_id=data["test_clock_id"],
            plan_id=data["plan_id"],
            plan_version=data["plan_version"],
            quantity=data["quantity"],
            state=State(data["state"]),
            billing_time_zone=data["billing_time_zone"],
            anchor_date=date.fromisoformat(data["anchor_date"]),
            start_time=datetime.fromisoformat(data["start_time"]),
            trial_end_time=when("trial_end_time"),
            period_index=data["period_index"],
            current_period_start=datetime.fromisoformat(data["current_period_start"]),
            current_period_end=datetime.fromisoformat(data["current_period_end"]),
            cancel_at_period_end=data["cancel_at_period_end"],
            cancel_time=when("cancel_time"),
            pause_time=when("pause_time"),
            scheduled_change=ScheduledChange(**scheduled) if scheduled else None,
            metadata=dict(data["metadata"]),
            create_time=datetime.fromisoformat(data["create_time"]),
            update_time=datetime.fromisoformat(data["update_time"]),
            revision=data["revision"],
        )


class ItemKind(StrEnum):
    FEE = "fee"
    PRORATION_CHARGE = "proration_charge"
    PRORATION_CREDIT = "proration_credit"


@dataclass(frozen=True)
class PendingItem:
    """A line a subscription owes (or is owed), waiting for invoicing. Rounded once, when made."""

    id: str  # "" in a preview
    account_id: str
    subscription_id: str
    kind: ItemKind
    fee_code: str
    description: str
    currency_code: str
    amount_minor: int
    quantity: Decimal
    period_start: datetime
    period_end: datetime
    plan_id: str
    plan_version: int
    create_time: datetime
    details: Mapping[str, str] = field(default_factory=dict)  # the exact fraction and full amount
    invoice_id: str = ""  # the invoice it is on; "" while pending

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "kind": self.kind.value,
            "quantity": format(self.quantity, "f"),
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "create_time": self.create_time.isoformat(),
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingItem:
        return cls(
            id=data["id"],
            account_id=data["account_id"],
            subscription_id=data["subscription_id"],
            kind=ItemKind(data["kind"]),
            fee_code=data["fee_code"],
            description=data["description"],
            currency_code=data["currency_code"],
            amount_minor=data["amount_minor"],
            quantity=Decimal(data["quantity"]),
            period_start=datetime.fromisoformat(data["period_start"]),
            period_end=datetime.fromisoformat(data["period_end"]),
            plan_id=data["plan_id"],
            plan_version=data["plan_version"],
            create_time=datetime.fromisoformat(data["create_time"]),
            details=dict(data["details"]),
            invoice_id=data.get("invoice_id", ""),
        )


@dataclass(frozen=True)
class Entitlement:
    feature_code: str
    display_name: str
    enabled: bool | None
    limit: int | None

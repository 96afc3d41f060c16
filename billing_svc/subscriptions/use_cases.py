"""One function per business action on a subscription; each owns its transaction.

Time is the account's billing clock (its test clock, or the wall clock), read inside the
transaction. Changes of plan or quantity are in change_use_cases.py; due work in work.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from billing_svc.catalog.cache_keys import CATALOG_FEATURES, entitlements_generation, plan_generation
from billing_svc.catalog.domain import PlanVersion
from billing_svc.subscriptions import domain, engine, work
from billing_svc.subscriptions.domain import PendingItem, Subscription
from billing_svc.subscriptions.meters import require_meters_free
from billing_svc.subscriptions.recording import record
from billing_svc.subscriptions.unit_of_work import SubscriptionsUnitOfWork
from core import ids
from core.cache import Entry, EntryCodec, NoCache, ReadCache
from core.clock import Clock
from core.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Violations
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import SYSTEM, Caller
from core.text import excerpt

MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500
# Fields an update may carry only as they are (a client sending the subscription back whole), and
# what changes each instead.
ECHO_ONLY = {
    "account_id": "cannot change: a subscription stays with its account",
    "plan_id": "changes with ChangeSubscription, not UpdateSubscription",
    "quantity": "changes with ChangeSubscription, not UpdateSubscription",
}
SUBSCRIPTION_CODEC = Codec(Subscription.to_dict, Subscription.from_dict)


@dataclass(frozen=True)
class ChangeResult:
    subscription: Subscription
    items: tuple[PendingItem, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"subscription": self.subscription.to_dict(), "items": [item.to_dict() for item in self.items]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChangeResult:
        return cls(
            Subscription.from_dict(data["subscription"]),
            tuple(PendingItem.from_dict(item) for item in data["items"]),
        )


@dataclass(frozen=True)
class SubscriptionDeps:
    new_uow: Callable[[], SubscriptionsUnitOfWork]
    new_reader: Callable[[], SubscriptionsUnitOfWork]
    wall_clock: Clock  # idempotency retention only; billing time is the account's clock
    page_tokens: PageTokens
    cache: ReadCache = field(default_factory=NoCache)  # GetEntitlements reads through it
    # A boundary's work and its invoice (billing_svc.billing_work.BillingWork in the app).
    boundary_work: work.BoundaryWork = field(default_factory=work.WithoutInvoices)
    runner: IdempotentRunner[SubscriptionsUnitOfWork, Subscription] = field(init=False, repr=False)
    change_runner: IdempotentRunner[SubscriptionsUnitOfWork, ChangeResult] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        runner = IdempotentRunner(self.new_uow, self.wall_clock, codec=SUBSCRIPTION_CODEC)
        change_runner = IdempotentRunner(
            self.new_uow, self.wall_clock, codec=Codec(ChangeResult.to_dict, ChangeResult.from_dict)
        )
        object.__setattr__(self, "runner", runner)
        object.__setattr__(self, "change_runner", change_runner)


# The commands: each is a request's content and its fingerprint under a request_id (AIP-155).


@dataclass(frozen=True)
class CreateSubscription:
    account_id: str
    plan_id: str
    quantity: int
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class UpdateSubscription:
    id: str
    metadata: tuple[tuple[str, str], ...]
    etag: str
    echoed: tuple[tuple[str, object], ...] = ()  # fields sent back, which must keep their value


@dataclass(frozen=True)
class CancelSubscription:
    id: str
    at_period_end: bool
    prorate: bool
    etag: str
    invoice_now: bool = False


@dataclass(frozen=True)
class UncancelSubscription:
    id: str


@dataclass(frozen=True)
class PauseSubscription:
    id: str
    prorate: bool


@dataclass(frozen=True)
class ResumeSubscription:
    id: str
    prorate: bool


@dataclass(frozen=True)
class SubscriptionPage:
    subscriptions: list[Subscription]
    next_page_token: str


@dataclass(frozen=True)
class ItemPage:
    items: list[PendingItem]
    next_page_token: str


def not_found(subscription_id: str) -> NotFound:
    return NotFound(
        f"subscription {excerpt(subscription_id)!r} not found",
        reason="SUBSCRIPTION_NOT_FOUND",
        metadata={"id": excerpt(subscription_id)},
    )


def account_not_found(account_id: str, field: str) -> NotFound:
    return NotFound(
        f"account {excerpt(account_id)!r} not found",
        reason="ACCOUNT_NOT_FOUND",
        metadata={"id": excerpt(account_id), "field": field},
    )


def require_id(value: str, field: str = "id") -> None:
    if not value:
        raise InvalidArgument.field(field, "is required")


def visible(caller: Caller, subscription: Subscription) -> bool:
    """Customers see only their own account's subscriptions; others' are NOT_FOUND."""
    own = caller.customer_account
    return own is None or own == subscription.account_id


async def load(
    uow: SubscriptionsUnitOfWork, caller: Caller, subscription_id: str, *, for_update: bool = True
) -> Subscription:
    subscription = None
    if len(subscription_id) <= ids.MAX_LENGTH:
        subscription = await uow.subscriptions.get(subscription_id, for_update=for_update)
    if subscription is None or not visible(caller, subscription):
        raise not_found(subscription_id)
    return subscription


async def load_current(
    deps: SubscriptionDeps,
    uow: SubscriptionsUnitOfWork,
    caller: Caller,
    subscription_id: str,
    *,
    etag: str = "",
    write: bool = True,
) -> tuple[Subscription, datetime]:
    """The subscription (checked against `etag` as the caller read it) brought up to its account's
    time, and that time. A boundary that has passed but whose work has not run yet (the worker is
    behind) is run first, in this transaction, so that no change is ever made to a stale period;
    a read-only caller (a preview) gets the same result computed, not written. The caught-up
    boundaries are invoiced as the billing worker invoices them (deps.boundary_work)."""
    current = await load(uow, caller, subscription_id, for_update=write)
    check_etag(current, etag)
    now = (await uow.clocks.time_for(current.account_id)).now
    due = current.due_time
    if due is None or due > now:
        return current, now
    if not write:
        return await work.caught_up(uow, current, now), now
    await deps.boundary_work.run_due_work(uow, current.id, now, caller=SYSTEM)
    return await load(uow, caller, subscription_id), now


async def plan_of(uow: SubscriptionsUnitOfWork, subscription: Subscription) -> PlanVersion:
    plan = await uow.plans.version(subscription.plan_id, subscription.plan_version)
    if plan is None:
        raise LookupError(f"plan {subscription.plan_id} v{subscription.plan_version} is missing")
    return plan


def check_etag(subscription: Subscription, etag: str) -> None:
    if etag and etag != subscription.etag:
        raise Aborted(
            "the subscription changed since this etag was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"id": subscription.id},
        )


def check_metadata(metadata: Mapping[str, str], path: str) -> tuple[tuple[str, str], ...]:
    violations = Violations()
    if len(metadata) > MAX_METADATA_ENTRIES:
        violations.add(path, f"must have at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            violations.add(f"{path}[{excerpt(key)!r}]", f"keys must be 1 to {MAX_METADATA_KEY} characters")
        if len(value) > MAX_METADATA_VALUE:
            violations.add(
                f"{path}[{excerpt(key)!r}]", f"values must be at most {MAX_METADATA_VALUE} characters"
            )
    violations.raise_if_any()
    return tuple(sorted(metadata.items()))


def check_quantity(plan: PlanVersion, quantity: int, path: str) -> int:
    """The seat quantity for `plan`: 1 when 0 on a plan with seats; refused on one without."""
    if plan.terms.seat_price is None:
        if quantity:
            raise InvalidArgument.field(path, f"must be 0: plan {plan.code!r} has no seat price")
        return 0
    if quantity == 0:
        return 1
    if not 1 <= quantity <= domain.MAX_QUANTITY:
        raise InvalidArgument.field(path, f"must be between 1 and {domain.MAX_QUANTITY:,}")
    return quantity


async def subscribable_plan(
    uow: SubscriptionsUnitOfWork, plan_id: str, currency_code: str, field: str
) -> PlanVersion:
    plan = await uow.plans.version(plan_id) if len(plan_id) <= ids.MAX_LENGTH else None
    if plan is None:
        raise NotFound(
            f"plan {excerpt(plan_id)!r} not found",
            reason="PLAN_NOT_FOUND",
            metadata={"id": excerpt(plan_id), "field": field},
        )
    if plan.is_archived:
        raise FailedPrecondition(
            f"plan {plan.code!r} is archived", reason="PLAN_ARCHIVED", metadata={"id": plan.plan_id}
        )
    if plan.currency_code != currency_code:
        raise FailedPrecondition(
            f"plan {plan.code!r} bills in {plan.currency_code}, the account in {currency_code}",
            reason="CURRENCY_MISMATCH",
            metadata={"plan_currency": plan.currency_code, "account_currency": currency_code},
        )
    return plan


async def create_subscription(
    deps: SubscriptionDeps,
    caller: Caller,
    *,
    account_id: str,
    plan_id: str,
    quantity: int,
    metadata: Mapping[str, str],
) -> Subscription:
    require_id(account_id, "subscription.account_id")
    require_id(plan_id, "subscription.plan_id")
    command = CreateSubscription(
        account_id, plan_id, quantity, check_metadata(metadata, "subscription.metadata")
    )

    async def action(uow: SubscriptionsUnitOfWork) -> Subscription:
        # Exclusive: two subscriptions started at once for one account queue here, so that each
        # sees the other's meters (billing_svc.subscriptions.meters).
        terms = await uow.accounts.terms(command.account_id, lock=True, exclusive=True)
        if terms is None or not terms.live:
            raise account_not_found(command.account_id, "subscription.account_id")
        plan = await subscribable_plan(uow, command.plan_id, terms.currency_code, "subscription.plan_id")
        seats = check_quantity(plan, command.quantity, "subscription.quantity")
        time = await uow.clocks.time_for(command.account_id)
        await require_meters_free(uow, command.account_id, plan, time.now, field="subscription.plan_id")
        step = engine.start(
            subscription_id=ids.new_id(domain.ID_PREFIX),
            account_id=command.account_id,
            test_clock_id=time.test_clock_id,
            plan=plan,
            quantity=seats,
            time_zone=terms.billing_time_zone or "UTC",
            now=time.now,
            metadata=dict(command.metadata),
        )
        await uow.plans.mark_in_use(plan.plan_id, plan.version)
        uow.invalidate_after_commit(plan_generation(plan.plan_id))  # GetPlan shows in_use
        written = await record(uow, caller, before=None, step=step, action="created", at=time.now)
        await deps.boundary_work.started(uow, caller, written.subscription)  # the first invoice
        return written.subscription

    return (await deps.runner.run(caller, command, action)).value


async def get_subscription(deps: SubscriptionDeps, caller: Caller, subscription_id: str) -> Subscription:
    require_id(subscription_id)
    async with deps.new_reader() as uow:
        found = None
        if len(subscription_id) <= ids.MAX_LENGTH:
            found = await uow.subscriptions.get(subscription_id)
    if found is None or not visible(caller, found):
        raise not_found(subscription_id)
    return found


async def list_subscriptions(
    deps: SubscriptionDeps,
    caller: Caller,
    *,
    size: int = 0,
    page_token: str = "",
    account_id: str = "",
    show_canceled: bool = False,
) -> SubscriptionPage:
    own = caller.customer_account
    if own is not None and account_id and account_id != own:
        return SubscriptionPage([], "")  # another account's: nothing, as if it had none
    only = own or account_id or None
    page = deps.page_tokens.keyset_page(
        size, page_token, {"account_id": only, "show_canceled": show_canceled}
    )
    async with deps.new_reader() as uow:
        rows = await uow.subscriptions.list(
            account_id=only, show_canceled=show_canceled, after=page.after, limit=page.fetch_limit
        )
    shown, token = page.slice(rows, key=lambda s: (s.create_time, s.id))
    return SubscriptionPage(shown, token)


async def update_subscription(
    deps: SubscriptionDeps,
    caller: Caller,
    subscription_id: str,
    *,
    metadata: Mapping[str, str],
    mask: tuple[str, ...],
    etag: str = "",
    echoed: Mapping[str, object] | None = None,
) -> Subscription:
    """Changes the metadata. `echoed` holds what the request carries for the other fields the
    mask names (AIP-134: a client may send the resource back whole): each must be empty or its
    current value, as they change by other methods; output-only names are ignored (AIP-203)."""
    require_id(subscription_id, "subscription.id")
    kept = _check_update_mask(mask, echoed or {})
    command = UpdateSubscription(
        subscription_id, check_metadata(metadata, "subscription.metadata"), etag, tuple(sorted(kept.items()))
    )

    async def action(uow: SubscriptionsUnitOfWork) -> Subscription:
        current, now = await load_current(deps, uow, caller, command.id, etag=command.etag)
        for name, value in command.echoed:
            if value != getattr(current, name):
                raise InvalidArgument.field(f"subscription.{name}", ECHO_ONLY[name])
        if dict(command.metadata) == dict(current.metadata):
            return current
        updated = replace(
            current, metadata=dict(command.metadata), update_time=now, revision=current.revision + 1
        )
        step = await record(uow, caller, before=current, step=engine.Step(updated), action="updated", at=now)
        return step.subscription

    return (await deps.runner.run(caller, command, action)).value


def _check_update_mask(mask: tuple[str, ...], echoed: Mapping[str, object]) -> dict[str, object]:
    """The echoed fields the mask names whose value is set (empty and zero mean left alone);
    INVALID_ARGUMENT for a name that is neither updatable, echoed nor output only."""
    kept: dict[str, object] = {}
    for name in mask:
        if name in ECHO_ONLY:
            value = echoed.get(name)
            if value:
                kept[name] = value
        elif name not in ("metadata", "*") and name.split(".", 1)[0] not in domain.OUTPUT_ONLY_FIELDS:
            raise InvalidArgument.field(
                "update_mask", f"{excerpt(name)!r} is not a field of a subscription that can be updated"
            )
    return kept


async def cancel_subscription(
    deps: SubscriptionDeps,
    caller: Caller,
    subscription_id: str,
    *,
    at_period_end: bool,
    prorate: bool,
    etag: str = "",
    invoice_now: bool = False,
) -> Subscription:
    require_id(subscription_id)
    if invoice_now and at_period_end:
        raise InvalidArgument.field(
            "invoice_now", "only for a cancel now: a cancel at the period end invoices its last period then"
        )
    command = CancelSubscription(subscription_id, at_period_end, prorate, etag, invoice_now)

    async def action(uow: SubscriptionsUnitOfWork) -> Subscription:
        current, now = await load_current(deps, uow, caller, command.id, etag=command.etag)
        if command.at_period_end:
            step = engine.schedule_cancel(current, now)
            action_name = "cancel_scheduled"
        else:
            plan = await plan_of(uow, current)
            step = engine.cancel_now(current, plan, now, prorate=command.prorate)
            action_name = "canceled"
        if step.subscription is current:
            return current
        written = await record(uow, caller, before=current, step=step, action=action_name, at=now)
        if command.invoice_now:  # the final invoice, in this transaction
            await deps.boundary_work.canceled_now(uow, caller, current, plan, now)
        return written.subscription

    return (await deps.runner.run(caller, command, action)).value


async def uncancel_subscription(deps: SubscriptionDeps, caller: Caller, subscription_id: str) -> Subscription:
    require_id(subscription_id)
    command = UncancelSubscription(subscription_id)

    async def action(uow: SubscriptionsUnitOfWork) -> Subscription:
        current, now = await load_current(deps, uow, caller, command.id)
        if not current.cancel_at_period_end:
            raise FailedPrecondition(
                "no cancel is scheduled for this subscription",
                reason="NO_SCHEDULED_CANCEL",
                metadata={"id": current.id, "state": current.state.value},
            )
        step = engine.uncancel(current, now)
        return (
            await record(uow, caller, before=current, step=step, action="uncanceled", at=now)
        ).subscription

    return (await deps.runner.run(caller, command, action)).value


async def pause_subscription(
    deps: SubscriptionDeps, caller: Caller, subscription_id: str, *, prorate: bool
) -> Subscription:
    require_id(subscription_id)
    command = PauseSubscription(subscription_id, prorate)

    async def action(uow: SubscriptionsUnitOfWork) -> Subscription:
        current, now = await load_current(deps, uow, caller, command.id)
        step = engine.pause(current, await plan_of(uow, current), now, prorate=command.prorate)
        return (await record(uow, caller, before=current, step=step, action="paused", at=now)).subscription

    return (await deps.runner.run(caller, command, action)).value


async def resume_subscription(
    deps: SubscriptionDeps, caller: Caller, subscription_id: str, *, prorate: bool
) -> Subscription:
    require_id(subscription_id)
    command = ResumeSubscription(subscription_id, prorate)

    async def action(uow: SubscriptionsUnitOfWork) -> Subscription:
        current, now = await load_current(deps, uow, caller, command.id)
        step = engine.resume(current, await plan_of(uow, current), now, prorate=command.prorate)
        return (await record(uow, caller, before=current, step=step, action="resumed", at=now)).subscription

    return (await deps.runner.run(caller, command, action)).value


async def _require_account(uow: SubscriptionsUnitOfWork, account_id: str) -> None:
    """An account that never existed has no billing to read: NOT_FOUND, not an empty answer (a
    deleted one keeps its records, readable)."""
    if len(account_id) > ids.MAX_LENGTH or await uow.accounts.terms(account_id) is None:
        raise account_not_found(account_id, "account_id")


async def list_pending_items(
    deps: SubscriptionDeps,
    caller: Caller,
    *,
    account_id: str,
    subscription_id: str = "",
    show_invoiced: bool = False,
    size: int = 0,
    page_token: str = "",
) -> ItemPage:
    require_id(account_id, "account_id")
    if caller.customer_account is not None and caller.customer_account != account_id:
        raise account_not_found(account_id, "account_id")
    scope = {"account_id": account_id, "subscription_id": subscription_id, "show_invoiced": show_invoiced}
    page = deps.page_tokens.keyset_page(size, page_token, scope)
    async with deps.new_reader() as uow:
        await _require_account(uow, account_id)
        rows = await uow.items.list(
            account_id=account_id,
            subscription_id=subscription_id or None,
            after=page.after,
            limit=page.fetch_limit,
            show_invoiced=show_invoiced,
        )
    shown, token = page.slice(rows, key=lambda item: (item.create_time, item.id))
    return ItemPage(shown, token)


_CACHED_ENTITLEMENTS = EntryCodec(
    lambda found: [[e.feature_code, e.display_name, e.enabled, e.limit] for e in found],
    lambda data: [domain.Entitlement(code, name, enabled, limit) for code, name, enabled, limit in data],
)


def entitlements_entry(account_id: str) -> Entry[list[domain.Entitlement]]:
    generations = (entitlements_generation(account_id), CATALOG_FEATURES)
    return Entry("entitlements", f"entitlements:{account_id}", generations, _CACHED_ENTITLEMENTS)


async def get_entitlements(
    deps: SubscriptionDeps, caller: Caller, account_id: str
) -> list[domain.Entitlement]:
    """Flags are on if any entitled subscription turns them on; a limit is the largest granted."""
    require_id(account_id, "account_id")
    if caller.customer_account is not None and caller.customer_account != account_id:
        raise account_not_found(account_id, "account_id")

    async def load() -> list[domain.Entitlement]:
        async with deps.new_reader() as uow:
            await _require_account(uow, account_id)
            return _merge(await uow.subscriptions.entitlements(account_id))

    # After the access check above: a customer never reaches another account's entry.
    found = await deps.cache.read(entitlements_entry(account_id), load)
    return found if found is not None else []


def _merge(rows: Sequence[domain.Entitlement]) -> list[domain.Entitlement]:
    merged: dict[str, domain.Entitlement] = {}
    for row in rows:
        if row.enabled is False:
            continue
        seen = merged.get(row.feature_code)
        if seen is None or (row.limit is not None and (seen.limit is None or row.limit > seen.limit)):
            merged[row.feature_code] = row
    return [merged[code] for code in sorted(merged)]

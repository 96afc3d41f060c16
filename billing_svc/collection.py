"""Automatic collection of subscription invoices, and dunning: retrying declined ones on a schedule.

What is collected. `invoices.use_cases.finalize` schedules a finalized invoice with a
subscription_id and an amount due (`next_collection_time` = its finalize time). Manual invoices
are not scheduled: they wait for PayInvoice or a payment made by hand. Saving an invoice paid,
void or uncollectible clears its schedule (invoices/repository.py `save`).

Who collects. The collection worker (`CollectionWorker`, `tally serve` and `tally worker`) claims
due invoices of wall-clock accounts (core.claims, on the invoices' own claim columns), calls the
collector (the payments module's `collect_invoice`) with no transaction open, holding the claim
(its lease) through the call so that no other worker charges the invoice meanwhile, and then, in
one transaction, applies the outcome (`apply_outcome`) and releases the claim; a worker whose
lease ran out rolls that transaction back. A test clock's invoices are collected by
AdvanceTestClock at the clock's time instead (`ClockCollections`, billing_svc/clocks/advance.py).

Outcomes (`Collected`):
- PAID: no more charges; a past-due or unpaid subscription is active again (`mark_paid`), unless
  another open invoice of it had a charge declined (`_recover`): it is still in dunning.
- DECLINED: one more failed attempt. The first one makes an active subscription past due; attempt
  n is retried at finalize time + `dunning_retry_days`[n - 1] (default 3,5,7: four charges in
  all); when the last retry fails, the subscription goes to `dunning_end_state` (canceled, or
  unpaid: no features, periods roll over without fees) and the invoice is left open: it stays
  owed, and paying it later by any path makes an unpaid subscription active again. (Marking it
  uncollectible is left to an operator, MarkInvoiceUncollectible, which restores it too.) Each
  decline emits `invoice.dunning_step` with the attempt count and the next attempt's time (`final`
  at the end).
- PENDING, GATEWAY_UNAVAILABLE (or the collector raising): tried again after
  `collection_retry_delay_seconds`; not a dunning step, the attempt count is unchanged.
- NO_PAYMENT_METHOD: no schedule any more; the invoice waits to be paid by hand (PayInvoice,
  CreatePayment), like a manual one, and the subscription's state is left as it is.
- NOTHING_DUE: no schedule any more (and, as after PAID, a paid invoice's subscription restored).

A payment by another path (PayInvoice, CreatePayment) restores the subscription in the worker's
pass, not where the invoice becomes paid (the paths that pay an invoice leave its subscription be):
saving a paid invoice that had declined attempts makes it due at its paid time, and the pass that
takes it finds it paid (NOTHING_DUE, or without calling out at all) and runs `mark_paid`.

Writing an open invoice off (VoidInvoice, MarkInvoiceUncollectible) ends its collection and
restores the subscription in that same transaction (`written_off`, the invoice use cases'
`WrittenOff`, which run on a SqlBillingUnitOfWork for this): the invoice's schedule and any
worker's claim on it are cleared, and `_recover` runs as after a payment. Stripe's subscription
is past due while payment on its latest invoice has failed
(https://docs.stripe.com/billing/subscriptions/overview, "Subscription statuses"); written off,
that invoice is no reason any more, as Stripe's pause on payment failure also resumes when the
invoice is paid or marked uncollectible
(https://docs.stripe.com/changelog/endive/2026-09-30/pause-on-payment-failure).

How others do it, and what we took: Stripe's custom retry schedule ("retry up to N times within M
days", then cancel the subscription, mark it unpaid or leave it past due; the invoice is left past
due or marked uncollectible), https://docs.stripe.com/billing/revenue-recovery/smart-retries
#custom-retry-schedule; Kill Bill's overdue states (a configured list of states reached N days
after the unpaid invoice, the last blocking entitlements and billing),
https://killbill.github.io/slate/overdue.html; Lago's dunning campaigns (a maximum number of
attempts and days between them). Here: days counted from finalization like Stripe's schedule, a
fixed list rather than Smart Retries' learned times, and the two end states that keep the books
simplest (canceled or unpaid; never an invoice written off automatically).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from sqlalchemy import exists, select, update

from billing_svc.billing_work import SqlBillingUnitOfWork
from billing_svc.clocks.tables import TestClockAccountRow
from billing_svc.invoices import domain as invoice_domain
from billing_svc.invoices.domain import Invoice, InvoiceStatus
from billing_svc.invoices.ports import InvoicesUnitOfWork
from billing_svc.invoices.tables import InvoiceRow
from billing_svc.subscriptions import engine
from billing_svc.subscriptions.domain import State, Subscription
from billing_svc.subscriptions.recording import record
from billing_svc.worker import ClaimLoop
from core.claims import WorkQueue, new_worker_id
from core.clock import Clock
from core.errors import FailedPrecondition
from core.principal import SYSTEM, Caller

log = logging.getLogger("tally.billing.collection")

QUEUE = WorkQueue.of(
    InvoiceRow,
    due_time="next_collection_time",
    claimed_by="collection_claimed_by",
    lease_until="collection_lease_until",
)
# Invoices of accounts on a test clock are collected by its advance, at its time.
ONLY_WALL_CLOCK = ~exists(
    select(TestClockAccountRow.account_id).where(TestClockAccountRow.account_id == InvoiceRow.account_id)
)
# The payments module's refusal of an account without a default payment method.
NO_PAYMENT_METHOD_REASONS = frozenset({"PAYMENT_METHOD_REQUIRED"})
# Nothing more is collected of an invoice in these states; its subscription may be restored.
SETTLED = frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE})
# The claim is held through the gateway calls: a batch of 50, 8 at once, each at most the payments
# module's 3 tries of a 10 s timeout, stays far inside it.
LEASE = timedelta(minutes=15)


class Collected(StrEnum):
    """What one collection attempt came to (the payments module's CollectionOutcome, by name)."""

    PAID = "paid"
    DECLINED = "declined"
    PENDING = "pending"
    NOTHING_DUE = "nothing_due"
    GATEWAY_UNAVAILABLE = "gateway_unavailable"
    NO_PAYMENT_METHOD = "no_payment_method"


def collected(outcome: object) -> Collected:
    """The outcome as a `Collected`: a member of any enum with these names, or one of the values."""
    name = getattr(outcome, "name", None)
    if isinstance(name, str) and name.lower() in Collected._value2member_map_:
        return Collected(name.lower())
    return Collected(str(outcome).lower())


class InvoiceCollector(Protocol):
    """Charges an invoice's amount remaining to the account's default payment method. Opens its own
    transactions (the attempt is committed before the gateway is called): call it with none open."""

    async def __call__(self, invoice_id: str) -> object: ...


class EndState(StrEnum):
    CANCELED = "canceled"
    UNPAID = "unpaid"


@dataclass(frozen=True)
class DunningPolicy:
    retry_days: tuple[int, ...] = (3, 5, 7)
    end_state: EndState = EndState.CANCELED
    retry_delay: timedelta = timedelta(hours=1)  # PENDING, GATEWAY_UNAVAILABLE

    @classmethod
    def from_settings(cls, retry_days: str, end_state: str, retry_delay_seconds: float) -> DunningPolicy:
        return cls(parse_retry_days(retry_days), EndState(end_state), timedelta(seconds=retry_delay_seconds))


def parse_retry_days(text: str) -> tuple[int, ...]:
    """ "3,5,7" -> (3, 5, 7); "" -> () (no retries). Days must increase."""
    days = tuple(int(part) for part in text.split(",") if part.strip())
    if any(day < 0 for day in days) or any(b <= a for a, b in itertools.pairwise(days)):
        raise ValueError(f"retry days must be increasing whole days, got {text!r}")
    return days


@dataclass(frozen=True)
class Decision:
    """What the schedule says after an outcome: the attempts counted, when to try next (None: never),
    and what becomes of the subscription."""

    attempts: int
    next_time: datetime | None
    past_due: bool = False  # the first decline
    exhausted: bool = False  # the last retry failed: the end state


def decide(
    policy: DunningPolicy, outcome: Collected, *, attempts: int, finalize_time: datetime, now: datetime
) -> Decision:
    """The schedule after one outcome (pure). `attempts` is the declines counted before this one."""
    if outcome is Collected.DECLINED:
        counted = attempts + 1
        retry = counted - 1  # the index of the retry that follows this decline
        if retry < len(policy.retry_days):
            at = finalize_time + timedelta(days=policy.retry_days[retry])
            return Decision(counted, max(at, now), past_due=counted == 1)
        return Decision(counted, None, past_due=counted == 1, exhausted=True)
    if outcome in (Collected.PENDING, Collected.GATEWAY_UNAVAILABLE):
        return Decision(attempts, now + policy.retry_delay)
    return Decision(attempts, None)  # PAID, NOTHING_DUE, NO_PAYMENT_METHOD


async def _attempts(uow: SqlBillingUnitOfWork, invoice_id: str) -> int:
    found = await uow.session.scalar(
        select(InvoiceRow.collection_attempts).where(InvoiceRow.id == invoice_id)
    )
    return int(found or 0)


async def _set_schedule(
    uow: SqlBillingUnitOfWork, invoice_id: str, attempts: int, at: datetime | None
) -> None:
    await uow.session.execute(
        update(InvoiceRow)
        .where(InvoiceRow.id == invoice_id)
        .values(collection_attempts=attempts, next_collection_time=at)
    )


async def apply_outcome(
    uow: SqlBillingUnitOfWork,
    policy: DunningPolicy,
    invoice_id: str,
    outcome: Collected,
    now: datetime,
    *,
    caller: Caller = SYSTEM,
) -> Decision:
    """Record what a collection attempt came to, in the caller's open transaction (not committed):
    the invoice's schedule, the subscription's state (audited and emitted through recording.py)
    and `invoice.payment_failed` on a decline. `now` is the account's billing time."""
    invoice = await uow.invoices.get(invoice_id, for_update=True)
    if invoice is None:  # invoices are never deleted; nothing to do for one that is gone
        return Decision(0, None)
    if invoice.status is not InvoiceStatus.OPEN and outcome is Collected.DECLINED:
        outcome = Collected.NOTHING_DUE  # paid or voided by another path while the charge failed
    attempts = await _attempts(uow, invoice_id)
    assert invoice.finalize_time is not None
    decision = decide(policy, outcome, attempts=attempts, finalize_time=invoice.finalize_time, now=now)
    await _set_schedule(uow, invoice_id, decision.attempts, decision.next_time)
    subscription = await _subscription_of(uow, invoice)
    if outcome is Collected.DECLINED:
        _emit_dunning_step(uow, invoice, decision)
    if subscription is None:
        return decision
    if invoice.status in SETTLED:
        await _recover(uow, caller, invoice, subscription, now)
    elif decision.past_due and subscription.state is State.ACTIVE:
        subscription = await _step(
            uow, caller, subscription, engine.mark_past_due(subscription, now), "past_due", now
        )
    if decision.exhausted and subscription.state is State.PAST_DUE:
        await _end(uow, caller, policy, subscription, now)
    return decision


async def written_off(uow: InvoicesUnitOfWork, caller: Caller, invoice: Invoice, now: datetime) -> None:
    """An open invoice voided or marked uncollectible (invoices/ports.py `WrittenOff`), in that
    transaction: its schedule and any claim on it are cleared already (the invoices' `save`); the
    subscription it bills is restored as a payment restores it (`_recover`). `now` is the account's
    billing time."""
    billing = _as_billing(uow)
    subscription = await _subscription_of(billing, invoice)
    if subscription is not None:
        await _recover(billing, caller, invoice, subscription, now)


def _as_billing(uow: InvoicesUnitOfWork) -> SqlBillingUnitOfWork:
    if not isinstance(uow, SqlBillingUnitOfWork):  # module.py gives the invoice use cases this one
        raise TypeError(f"a write-off needs a SqlBillingUnitOfWork, not {type(uow).__name__}")
    return uow


async def _subscription_of(uow: SqlBillingUnitOfWork, invoice: Invoice) -> Subscription | None:
    if not invoice.subscription_id:
        return None
    return await uow.subscriptions.get(invoice.subscription_id, for_update=True)


async def _recover(
    uow: SqlBillingUnitOfWork, caller: Caller, invoice: Invoice, subscription: Subscription, now: datetime
) -> None:
    """A past-due or unpaid subscription is active again once `invoice` is settled (paid, void or
    uncollectible) and no other invoice of it is still in dunning: open, with a declined charge.
    A subscription canceled at the end of dunning stays canceled."""
    if invoice.status not in SETTLED or subscription.state not in (State.PAST_DUE, State.UNPAID):
        return
    if await _declined_elsewhere(uow, invoice):
        return
    await _step(uow, caller, subscription, engine.mark_paid(subscription, now), "payment_recovered", now)


async def _declined_elsewhere(uow: SqlBillingUnitOfWork, invoice: Invoice) -> bool:
    """Whether another open invoice of the subscription had a charge declined. Only a decline makes a
    subscription past due, and each way such an invoice is settled runs `_recover` again (a payment
    through the worker's pass, a write-off in its own transaction), so none is left waiting."""
    found = await uow.session.scalar(
        select(InvoiceRow.id)
        .where(
            InvoiceRow.account_id == invoice.account_id,
            InvoiceRow.subscription_id == invoice.subscription_id,
            InvoiceRow.id != invoice.id,
            InvoiceRow.status == InvoiceStatus.OPEN.value,
            InvoiceRow.collection_attempts > 0,
        )
        .limit(1)
    )
    return found is not None


async def _end(
    uow: SqlBillingUnitOfWork,
    caller: Caller,
    policy: DunningPolicy,
    subscription: Subscription,
    now: datetime,
) -> None:
    if policy.end_state is EndState.UNPAID:
        await _step(uow, caller, subscription, engine.mark_unpaid(subscription, now), "unpaid", now)
        return
    plan = await uow.plans.version(subscription.plan_id, subscription.plan_version)
    if plan is None:  # plan versions are never deleted; a missing one is corrupt data
        raise LookupError(f"plan {subscription.plan_id} version {subscription.plan_version} is missing")
    # No proration: the period was not paid for, so there is nothing to credit.
    step = engine.cancel_now(subscription, plan, now, prorate=False)
    await _step(uow, caller, subscription, step, "canceled", now)


async def _step(
    uow: SqlBillingUnitOfWork,
    caller: Caller,
    before: Subscription,
    step: engine.Step,
    action: str,
    now: datetime,
) -> Subscription:
    return (await record(uow, caller, before=before, step=step, action=action, at=now)).subscription


def _emit_dunning_step(uow: SqlBillingUnitOfWork, invoice: Invoice, decision: Decision) -> None:
    """What Stripe's invoice.payment_failed says of the schedule: the attempt count and when the next
    one is (None: never; `final` when the retries are exhausted). The payment's own failure is the
    payments module's `invoice.payment_failed`."""
    uow.emit(
        "invoice.dunning_step",
        (invoice_domain.RESOURCE_TYPE, invoice.id),
        {
            "id": invoice.id,
            "account_id": invoice.account_id,
            "subscription_id": invoice.subscription_id,
            "amount_remaining_minor": invoice.amount_remaining_minor,
            "currency_code": invoice.currency_code,
            "attempt_count": decision.attempts,
            "next_attempt_time": None if decision.next_time is None else decision.next_time.isoformat(),
            "final": decision.exhausted,
        },
    )


async def collect_once(
    collector: InvoiceCollector, invoice_id: str, on_outcome: Callable[[str], None]
) -> Collected:
    """One call of the collector (no transaction open). The payments module refuses an account without
    a default payment method (FAILED_PRECONDITION PAYMENT_METHOD_REQUIRED): NO_PAYMENT_METHOD. A
    collector that raises otherwise (a gateway not configured, a bug) is logged and counts as
    GATEWAY_UNAVAILABLE: the invoice is tried again after the retry delay."""
    try:
        outcome = collected(await collector(invoice_id))
    except FailedPrecondition as exc:
        if exc.reason in NO_PAYMENT_METHOD_REASONS:
            outcome = Collected.NO_PAYMENT_METHOD
        else:
            log.warning("collecting invoice %s refused (%s); trying again later", invoice_id, exc)
            outcome = Collected.GATEWAY_UNAVAILABLE
    except Exception:
        log.exception("collecting invoice %s failed; trying again later", invoice_id)
        outcome = Collected.GATEWAY_UNAVAILABLE
    on_outcome(outcome.value)
    return outcome


async def _billing_now(uow: SqlBillingUnitOfWork, account_id: str) -> datetime:
    return (await uow.clocks.time_for(account_id)).now


@dataclass
class CollectionReport:
    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    lost: int = 0

    def add(self, outcome: Collected) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1

    def merge(self, other: CollectionReport) -> None:
        self.claimed += other.claimed
        self.lost += other.lost
        for outcome, count in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count

    def summary(self) -> str:
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items()))
        return f"{self.claimed} invoices claimed; {outcomes or 'no outcomes'}; {self.lost} claims lost"


class CollectionWorker(ClaimLoop):
    """Charges the due invoices of wall-clock accounts and applies the dunning schedule."""

    queue = QUEUE
    where = ONLY_WALL_CLOCK
    lease = LEASE

    def __init__(
        self,
        new_uow: Callable[[], SqlBillingUnitOfWork],
        collector: InvoiceCollector,
        policy: DunningPolicy,
        clock: Clock,
        *,
        interval_seconds: float = 10.0,
        batch: int = 50,
        concurrency: int = 8,
        name: str = "collection",
        on_outcome: Callable[[str], None] = lambda outcome: None,
    ):
        super().__init__(
            new_uow, clock, interval_seconds=interval_seconds, batch=batch, name=name, logger=log
        )
        if concurrency <= 0:
            raise ValueError("concurrency must be positive")
        self._gate = asyncio.Semaphore(concurrency)
        self._collector = collector
        self._policy = policy
        self._on_outcome = on_outcome  # metrics: tally_collections_total{outcome}

    async def run_pass(self) -> None:
        report = await self.run_until_idle()
        if report.claimed:
            log.info("collection pass: %s", report.summary())

    async def one_pass(self) -> CollectionReport:
        """Claim one batch of due invoices and collect each."""
        claimed = await self.claim_batch()
        report = CollectionReport(claimed=len(claimed))
        # The batch's invoices are charged side by side (at most `concurrency` at once): the gateway's
        # round trips, not the database, set the pace.
        await asyncio.gather(
            *(self._bounded(QUEUE.key_of(row), row.id, row.account_id, row.status, report) for row in claimed)
        )
        return report

    async def _bounded(
        self, key: tuple[object, ...], invoice_id: str, account_id: str, status: str, report: CollectionReport
    ) -> None:
        async with self._gate:
            await self._collect(key, invoice_id, account_id, status, report)

    async def _collect(
        self, key: tuple[object, ...], invoice_id: str, account_id: str, status: str, report: CollectionReport
    ) -> None:
        # A paid (or voided) invoice is due only so that its subscription is restored: no charge.
        if status == InvoiceStatus.OPEN.value:
            outcome = await collect_once(self._collector, invoice_id, self._on_outcome)
        else:
            outcome = Collected.NOTHING_DUE
        try:
            async with self._new_uow() as uow:
                now = await _billing_now(uow, account_id)
                await apply_outcome(uow, self._policy, invoice_id, outcome, now)
                if not await QUEUE.release(uow.session, self.worker, [key]):
                    # The lease ran out and another worker has the invoice: it records what it finds.
                    report.lost += 1
                    return
                await uow.commit()
        except Exception:
            # The charge's own records are the payments module's and committed: a paid invoice is
            # NOTHING_DUE when it is taken again, after the retry delay.
            retry = self._clock.now() + self._policy.retry_delay
            log.exception("recording the collection of invoice %s failed; due again at %s", invoice_id, retry)
            async with self._new_uow() as uow:
                await QUEUE.release(uow.session, self.worker, [key], due=retry)
                await uow.commit()
            report.add(Collected.GATEWAY_UNAVAILABLE)
            return
        report.add(outcome)

    async def run_until_idle(self, *, max_passes: int = 100_000) -> CollectionReport:
        """Passes until one claims fewer than a batch (`tally worker --once`)."""
        total = CollectionReport()
        for _ in range(max_passes):
            report = await self.one_pass()
            total.merge(report)
            if report.claimed < self._batch or self.stopping:
                break
        return total


@dataclass(frozen=True)
class DueCollection:
    invoice_id: str
    due_time: datetime


class ClockCollections:
    """The collections of a test clock's accounts, for AdvanceTestClock (billing_svc.clocks.ports
    `Collections`): which is due first, and collecting it at the clock's time."""

    def __init__(
        self,
        new_uow: Callable[[], SqlBillingUnitOfWork],
        collector: InvoiceCollector,
        policy: DunningPolicy,
        wall_clock: Clock,
        *,
        on_outcome: Callable[[str], None] = lambda outcome: None,
    ):
        self._new_uow = new_uow
        self._collector = collector
        self._policy = policy
        self._wall = wall_clock
        self._on_outcome = on_outcome
        self.worker = new_worker_id("advance")

    async def next_due(self, uow: object, clock_id: str, until: datetime) -> DueCollection | None:
        """In the advance's open transaction: the clock's invoice due first at or before `until`,
        not held by a worker (by due time, then id)."""
        assert isinstance(uow, SqlBillingUnitOfWork)
        wall = self._wall.now()
        statement = (
            select(InvoiceRow.id, InvoiceRow.next_collection_time)
            .join(TestClockAccountRow, TestClockAccountRow.account_id == InvoiceRow.account_id)
            .where(
                TestClockAccountRow.test_clock_id == clock_id,
                InvoiceRow.next_collection_time.is_not(None),
                InvoiceRow.next_collection_time <= until,
                (InvoiceRow.collection_lease_until.is_(None)) | (InvoiceRow.collection_lease_until <= wall),
            )
            .order_by(InvoiceRow.next_collection_time, InvoiceRow.id)
            .limit(1)
        )
        row = (await uow.session.execute(statement)).first()
        if row is None or row.next_collection_time is None:
            return None
        return DueCollection(row.id, row.next_collection_time)

    async def claim(self, uow: object, invoice_id: str) -> bool:
        """In the advance's open transaction: hold the invoice (on wall time) while it is collected."""
        assert isinstance(uow, SqlBillingUnitOfWork)
        wall = self._wall.now()
        result = await uow.session.execute(
            update(InvoiceRow)
            .where(
                InvoiceRow.id == invoice_id,
                (InvoiceRow.collection_lease_until.is_(None)) | (InvoiceRow.collection_lease_until <= wall),
            )
            .values(collection_claimed_by=self.worker, collection_lease_until=wall + LEASE)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def collect(self, invoice_id: str, at: datetime, *, caller: Caller) -> str:
        """After the claim committed, with no transaction open: charge, then record the outcome at
        `at` (the clock's time) and release the claim in one transaction."""
        async with self._new_uow() as uow:
            invoice = await uow.invoices.get(invoice_id)
        if invoice is not None and invoice.status is InvoiceStatus.OPEN:
            outcome = await collect_once(self._collector, invoice_id, self._on_outcome)
        else:
            outcome = Collected.NOTHING_DUE
        async with self._new_uow() as uow:
            await apply_outcome(uow, self._policy, invoice_id, outcome, at, caller=caller)
            await QUEUE.release(uow.session, self.worker, [(invoice_id,)])
            await uow.commit()
        return outcome.value

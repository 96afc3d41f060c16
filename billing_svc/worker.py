"""The billing worker: renews due subscriptions and issues their invoices, in any number of replicas.

A pass claims up to `batch` due subscriptions (core/claims.py: `due_time` is a subscription's next
boundary; SKIP LOCKED on PostgreSQL) and runs each one's work (billing_svc/billing_work.py) in a
transaction of its own that also gives the claim back: the boundary, its invoice and the end of
the claim commit together. A worker whose lease ran out (another took the row) finds it no longer
holds the claim and rolls its work back. Work that fails is logged and the subscription is due
again after RETRY_DELAY, so one bad subscription does not stop the others or spin the worker.

A pass then claims the draft cycle invoices whose grace period has ended (the invoice rows'
`finalize_*` claim columns) and finalizes each (billing_svc/billing_work.py `finalize_due_draft`),
in a transaction of its own that also completes its claim.

Subscriptions and invoices of accounts on a test clock are not the worker's: AdvanceTestClock runs
their work at the clock's time. Everything else runs at its account's billing time, which is the
wall clock.

`run_until_idle` is `tally worker --once`: passes until nothing is due, with a progress callback.
`run` is the job `tally serve` and `tally worker` keep running, one pass every interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from sqlalchemy import ColumnElement, Row, select

from billing_svc.billing_work import SqlBillingUnitOfWork
from billing_svc.clocks.ports import RunDueWork
from billing_svc.clocks.tables import TestClockAccountRow
from billing_svc.invoices.tables import InvoiceRow
from billing_svc.subscriptions.tables import SubscriptionRow
from core.claims import WorkQueue, new_worker_id
from core.clock import Clock
from core.periodic import PeriodicPasses
from core.principal import SYSTEM, Caller

log = logging.getLogger("tally.billing.worker")

QUEUE = WorkQueue.of(SubscriptionRow)
ONLY_WALL_CLOCK = SubscriptionRow.test_clock_id.is_(None)
DRAFTS = WorkQueue.of(
    InvoiceRow,
    due_time="finalize_due_time",
    claimed_by="finalize_claimed_by",
    lease_until="finalize_lease_until",
)
DRAFTS_ON_WALL_CLOCK = InvoiceRow.account_id.not_in(select(TestClockAccountRow.account_id))
LEASE = timedelta(minutes=5)
RETRY_DELAY = timedelta(minutes=1)


class FinalizeDraft(Protocol):
    """billing_svc.billing_work.BillingWork.finalize_due_draft: finalize one draft whose grace has
    ended, in the unit of work's open transaction; whether it did."""

    async def __call__(
        self, uow: SqlBillingUnitOfWork, invoice_id: str, now: datetime, /, *, caller: Caller
    ) -> bool: ...


@dataclass
class PassReport:
    """What passes did: subscriptions claimed, boundaries run by kind, failures, claims lost, and the
    drafts claimed and finalized after their grace period."""

    claimed: int = 0
    work: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    lost: int = 0
    drafts: int = 0
    finalized: int = 0

    def add(self, other: PassReport) -> None:
        self.claimed += other.claimed
        self.failed += other.failed
        self.lost += other.lost
        self.drafts += other.drafts
        self.finalized += other.finalized
        for kind, count in other.work.items():
            self.work[kind] = self.work.get(kind, 0) + count

    def summary(self) -> str:
        work = ", ".join(f"{kind} {count}" for kind, count in sorted(self.work.items())) or "no boundaries"
        text = f"{self.claimed} subscriptions claimed; {work}; {self.failed} failed; {self.lost} claims lost"
        return text + (f"; {self.finalized} invoices finalized after grace" if self.drafts else "")

    def idle(self, batch: int) -> bool:
        """Whether this pass leaves no more work for another at once (every batch came back short,
        or everything it claimed failed)."""
        subscriptions_done = self.claimed < batch or self.claimed == self.failed
        return subscriptions_done and self.drafts < batch


class ClaimLoop(PeriodicPasses):
    """A worker over one WorkQueue of wall-clock rows: the billing worker's and the collection
    worker's shared part (claiming a batch in a short transaction of its own, counting what is due).
    A subclass names its queue, the rows it takes (`where`) and its lease."""

    queue: ClassVar[WorkQueue]
    where: ClassVar[ColumnElement[bool]]
    lease: ClassVar[timedelta]

    def __init__(
        self,
        new_uow: Callable[[], SqlBillingUnitOfWork],
        clock: Clock,
        *,
        interval_seconds: float,
        batch: int,
        name: str,
        logger: logging.Logger,
    ):
        super().__init__(interval_seconds, what=f"{name} worker pass", log=logger)
        if batch <= 0:
            raise ValueError("batch must be positive")
        self._new_uow = new_uow
        self._clock = clock
        self._batch = batch
        self.worker = new_worker_id(name)

    async def due_count(self) -> int:
        """How many rows are due for this worker now (for a progress bar)."""
        async with self._new_uow() as uow:
            return await self.queue.due_count(uow.session, now=self._clock.now(), where=self.where)

    async def claim_batch(self) -> list[Row[Any]]:
        """One batch of due rows claimed for this worker, committed."""
        async with self._new_uow() as uow:
            claimed = await self.queue.claim(
                uow.session,
                self.worker,
                now=self._clock.now(),
                lease=self.lease,
                limit=self._batch,
                where=self.where,
            )
            await uow.commit()
        return claimed


class BillingWorker(ClaimLoop):
    queue = QUEUE
    where = ONLY_WALL_CLOCK
    lease = LEASE

    def __init__(
        self,
        new_uow: Callable[[], SqlBillingUnitOfWork],
        work: RunDueWork[SqlBillingUnitOfWork],
        clock: Clock,
        *,
        interval_seconds: float = 10.0,
        batch: int = 100,
        name: str = "billing",
        on_work: Callable[[str, int], None] = lambda kind, count: None,
        finalize: FinalizeDraft | None = None,
    ):
        super().__init__(
            new_uow, clock, interval_seconds=interval_seconds, batch=batch, name=name, logger=log
        )
        self._work = work
        self._on_work = on_work  # metrics: (kind, count) per boundary kind, "failed" per failure
        self._finalize = finalize  # None: drafts are not this worker's (a bench of renewals alone)

    async def run_pass(self) -> None:
        """Batches until one comes back short: a backlog is worked through, not one batch an interval."""
        total = PassReport()
        while True:
            report = await self.one_pass()
            total.add(report)
            if report.idle(self._batch) or self.stopping:
                break
        if total.claimed or total.drafts:
            log.info("billing pass: %s", total.summary())

    async def one_pass(self) -> PassReport:
        """Claim one batch of due subscriptions and run each one's work, then one batch of drafts
        whose grace has ended and finalize each."""
        claimed = await self.claim_batch()
        report = PassReport(claimed=len(claimed))
        for row in claimed:
            await self._run_one(QUEUE.key_of(row), row.id, report)
        if self._finalize is not None:
            await self._finalize_drafts(self._finalize, report)
        return report

    async def _finalize_drafts(self, finalize: FinalizeDraft, report: PassReport) -> None:
        async with self._new_uow() as uow:
            drafts = await DRAFTS.claim(
                uow.session,
                self.worker,
                now=self._clock.now(),
                lease=LEASE,
                limit=self._batch,
                where=DRAFTS_ON_WALL_CLOCK,
            )
            await uow.commit()
        report.drafts += len(drafts)
        for row in drafts:
            await self._finalize_one(finalize, DRAFTS.key_of(row), row.id, report)

    async def _finalize_one(
        self, finalize: FinalizeDraft, key: tuple[Any, ...], invoice_id: str, report: PassReport
    ) -> None:
        try:
            async with self._new_uow() as uow:
                finalized = await finalize(uow, invoice_id, self._clock.now(), caller=SYSTEM)
                if not await DRAFTS.complete(uow.session, self.worker, [key]):
                    report.lost += 1  # another worker has the draft now: it finalizes it
                    return
                await uow.commit()
        except Exception:
            log.exception("finalizing invoice %s failed; due again in %s", invoice_id, RETRY_DELAY)
            report.failed += 1
            self._on_work("failed", 1)
            async with self._new_uow() as uow:
                await DRAFTS.release(uow.session, self.worker, [key], due=self._clock.now() + RETRY_DELAY)
                await uow.commit()
            return
        report.finalized += int(finalized)

    async def _run_one(self, key: tuple[object, ...], subscription_id: str, report: PassReport) -> None:
        try:
            async with self._new_uow() as uow:
                now = self._clock.now()
                done = await self._work(uow, subscription_id, now, caller=SYSTEM)
                if not await QUEUE.release(uow.session, self.worker, [key]):
                    # The lease ran out and another worker has the subscription: it does the work.
                    report.lost += 1
                    return
                await uow.commit()
        except Exception:
            log.exception(
                "billing work of subscription %s failed; due again in %s", subscription_id, RETRY_DELAY
            )
            report.failed += 1
            self._on_work("failed", 1)
            async with self._new_uow() as uow:
                await QUEUE.release(uow.session, self.worker, [key], due=self._clock.now() + RETRY_DELAY)
                await uow.commit()
            return
        for work in done:
            kind = str(work.kind)
            report.work[kind] = report.work.get(kind, 0) + 1
            self._on_work(kind, 1)

    async def run_until_idle(
        self, *, max_passes: int = 100_000, progress: Callable[[PassReport], None] = lambda report: None
    ) -> PassReport:
        """Passes until one claims nothing (`tally worker --once`); the total, reported after each pass."""
        total = PassReport()
        for _ in range(max_passes):
            report = await self.one_pass()
            total.add(report)
            progress(total)
            if (report.claimed == 0 or report.claimed == report.failed) and report.drafts == 0:
                break
        return total

"""The payment reconciler: settles attempts and refunds the inline protocols left unsettled, in any
number of replicas.

An attempt is left in_flight by a process that died between committing it and recording the
gateway's answer, unknown when the gateway never answered, pending when the gateway has not decided
yet; a refund is left pending the same three ways (refunds.py). Each carries a due time
(`TALLY_PAYMENT_RECONCILE_AFTER_SECONDS` after it was last touched). A pass claims due attempts and
due refunds (core.claims: SKIP LOCKED on PostgreSQL, so replicas share them), looks each up at its
gateway by its id (the idempotency key it was sent under) with no transaction open, and records what
the lookup says in a transaction that also ends the claim:

    succeeded, declined (a refund:       recorded as the inline protocol would (collect.settle,
    succeeded, failed or canceled)       refunds.settle_refund)
    nothing under the key, and the       never sent: the attempt failed, the payment FAILED
    attempt or refund older than the     (failure_code `not_charged`); the refund failed
    gateway timeout                      (`not_refunded`), its amount no longer held
    unknown, pending, or nothing yet     left as it is, due again a reconcile delay later

A worker whose lease ran out (another took the item) finds it no longer holds the claim and rolls
its recording back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from billing_svc.payments import domain
from billing_svc.payments.collect import PaymentDeps, reload, settle
from billing_svc.payments.gateways.port import ChargeResult, ChargeStatus, RefundResult, RefundStatus
from billing_svc.payments.ports import PaymentsUnitOfWork
from billing_svc.payments.refunds import settle_refund
from core.claims import new_worker_id
from core.clock import Clock
from core.periodic import PeriodicPasses
from core.principal import SYSTEM

log = logging.getLogger("tally.payments.reconciler")

LEASE = timedelta(minutes=5)
_OPEN_ENDED = frozenset(
    {ChargeStatus.UNKNOWN, ChargeStatus.PENDING, RefundStatus.UNKNOWN, RefundStatus.PENDING}
)


@dataclass
class ReconcileReport:
    claimed: int = 0
    settled: int = 0
    deferred: int = 0
    failed: int = 0
    lost: int = 0

    def summary(self) -> str:
        return (
            f"{self.claimed} attempts and refunds claimed; {self.settled} settled, {self.deferred} left "
            f"for later, {self.failed} failed, {self.lost} claims lost"
        )


@dataclass(frozen=True)
class _Lookup:
    """What a lookup learnt of one claimed attempt or refund, and how to record it."""

    unsettled: bool  # still unsettled when reloaded (else recording changes nothing)
    create_time: datetime | None
    result: ChargeResult | RefundResult | None
    # Records `result` in the given transaction; what stays unsettled is due at the time given.
    record: Callable[[PaymentsUnitOfWork, datetime | None], Awaitable[object]]


class PaymentReconciler(PeriodicPasses):
    def __init__(
        self,
        deps: PaymentDeps,
        *,
        clock: Clock | None = None,
        interval_seconds: float = 10.0,
        batch: int = 100,
        name: str = "payments",
    ):
        super().__init__(interval_seconds, what="payment reconciler pass", log=log)
        if batch <= 0:
            raise ValueError("batch must be positive")
        self._deps = deps
        self._clock = clock or deps.clock
        self._batch = batch
        self.worker = new_worker_id(name)

    async def run_pass(self) -> None:
        report = await self.one_pass()
        if report.claimed:
            log.info("payment reconciler pass: %s", report.summary())

    async def one_pass(self) -> ReconcileReport:
        async with self._deps.new_uow() as uow:
            now = self._clock.now()
            attempts = await uow.payments.claim_due_attempts(
                self.worker, now=now, lease=LEASE, limit=self._batch
            )
            refunds = await uow.payments.claim_due_refunds(
                self.worker, now=now, lease=LEASE, limit=self._batch
            )
            await uow.commit()
        report = ReconcileReport(claimed=len(attempts) + len(refunds))
        claimed = [(p, a, False) for p, a in attempts] + [(p, r, True) for p, r in refunds]
        for payment_id, item_id, is_refund in claimed:
            try:
                found = await (self._look_up_refund if is_refund else self._look_up_attempt)(
                    payment_id, item_id
                )
                await self._record(item_id, is_refund, found, report)
            except Exception:
                what = "refund" if is_refund else "attempt"
                log.exception(
                    "reconciling %s %s of payment %s failed; due again later", what, item_id, payment_id
                )
                report.failed += 1
                await self._release(item_id, is_refund)
        return report

    async def _look_up_attempt(self, payment_id: str, attempt_id: str) -> _Lookup:
        deps = self._deps
        payment = await reload(deps, payment_id)
        attempt = payment.attempt(attempt_id)
        unsettled = attempt is not None and attempt.status in domain.UNSETTLED
        result = None
        if unsettled:
            result = await deps.gateways.get(payment.gateway).lookup(attempt_id)  # no transaction open

        async def record(uow: PaymentsUnitOfWork, later: datetime | None) -> None:
            await settle(deps, uow, SYSTEM, payment, attempt_id, result, may_retry=False, reconcile_at=later)

        return _Lookup(unsettled, attempt.create_time if attempt else None, result, record)

    async def _look_up_refund(self, payment_id: str, refund_id: str) -> _Lookup:
        deps = self._deps
        payment = await reload(deps, payment_id)
        refund = payment.refund(refund_id)
        unsettled = refund is not None and refund.status is domain.RefundStatus.PENDING
        result = None
        if unsettled:
            gateway = deps.gateways.get(payment.gateway)
            result = await gateway.lookup_refund(refund_id, charge_reference=payment.charge_reference)

        async def record(uow: PaymentsUnitOfWork, later: datetime | None) -> None:
            await settle_refund(deps, uow, SYSTEM, payment_id, refund_id, result, reconcile_at=later)

        return _Lookup(unsettled, refund.create_time if refund else None, result, record)

    async def _record(self, item_id: str, is_refund: bool, found: _Lookup, report: ReconcileReport) -> None:
        deps = self._deps
        now = self._clock.now()
        later = now + deps.reconcile_after
        # Nothing under the key proves nothing until the call could no longer be on its way.
        too_soon = found.create_time is not None and now - found.create_time < deps.gateway_timeout
        open_ended = found.result is not None and found.result.status in _OPEN_ENDED
        async with deps.new_uow() as uow:
            repository = uow.payments
            if found.unsettled and ((found.result is None and too_soon) or open_ended):
                if open_ended:
                    await found.record(uow, later)
                release = repository.release_refund if is_refund else repository.release_attempt
                held = await release(self.worker, item_id, due=later)
                report.deferred += 1
            else:
                await found.record(uow, None)
                complete = repository.complete_refund if is_refund else repository.complete_attempt
                held = await complete(self.worker, item_id)
                report.settled += 1
            if not held:
                report.lost += 1  # another worker has it now: it records the outcome
                return
            await uow.commit()

    async def _release(self, item_id: str, is_refund: bool) -> None:
        async with self._deps.new_uow() as uow:
            due = self._clock.now() + self._deps.reconcile_after
            release = uow.payments.release_refund if is_refund else uow.payments.release_attempt
            await release(self.worker, item_id, due=due)
            await uow.commit()

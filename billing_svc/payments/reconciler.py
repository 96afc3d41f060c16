"""The payment reconciler: settles attempts the inline protocol left unsettled, in any number of
replicas.

An attempt is left in_flight by a process that died between committing it and recording the
gateway's answer, unknown when the gateway never answered, pending when the gateway has not decided
yet. Each carries a due time (`TALLY_PAYMENT_RECONCILE_AFTER_SECONDS` after it was last touched).
A pass claims due attempts (core.claims: SKIP LOCKED on PostgreSQL, so replicas share them), looks
each up at its gateway by its id (the idempotency key it was sent under) with no transaction open,
and records what the lookup says in a transaction that also ends the claim:

    succeeded, declined                  recorded as the inline protocol would (collect.settle)
    nothing under the key, and the       never charged: the attempt failed, the payment FAILED
    attempt older than the gateway       (failure_code `not_charged`)
    timeout
    unknown, pending, or nothing yet     left as it is, due again a reconcile delay later

A worker whose lease ran out (another took the attempt) finds it no longer holds the claim and
rolls its recording back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from billing_svc.payments import domain
from billing_svc.payments.collect import PaymentDeps, reload, settle
from billing_svc.payments.gateways.port import ChargeStatus
from core.claims import new_worker_id
from core.clock import Clock
from core.periodic import PeriodicPasses
from core.principal import SYSTEM

log = logging.getLogger("tally.payments.reconciler")

LEASE = timedelta(minutes=5)


@dataclass
class ReconcileReport:
    claimed: int = 0
    settled: int = 0
    deferred: int = 0
    failed: int = 0
    lost: int = 0

    def summary(self) -> str:
        return (
            f"{self.claimed} attempts claimed; {self.settled} settled, {self.deferred} left for later, "
            f"{self.failed} failed, {self.lost} claims lost"
        )


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
            claimed = await uow.payments.claim_due_attempts(
                self.worker, now=self._clock.now(), lease=LEASE, limit=self._batch
            )
            await uow.commit()
        report = ReconcileReport(claimed=len(claimed))
        for payment_id, attempt_id in claimed:
            try:
                await self._settle_one(payment_id, attempt_id, report)
            except Exception:
                log.exception(
                    "reconciling attempt %s of payment %s failed; due again later", attempt_id, payment_id
                )
                report.failed += 1
                await self._release(attempt_id)
        return report

    async def _settle_one(self, payment_id: str, attempt_id: str, report: ReconcileReport) -> None:
        deps = self._deps
        payment = await reload(deps, payment_id)
        attempt = payment.attempt(attempt_id)
        result = None
        unsettled = attempt is not None and attempt.status in domain.UNSETTLED
        if unsettled:
            result = await deps.gateways.get(payment.gateway).lookup(attempt_id)  # no transaction open
        now = self._clock.now()
        later = now + deps.reconcile_after
        # Nothing under the key proves nothing until the charge could no longer be on its way.
        too_soon = attempt is not None and now - attempt.create_time < deps.gateway_timeout
        open_ended = result is not None and result.status in (ChargeStatus.UNKNOWN, ChargeStatus.PENDING)
        async with deps.new_uow() as uow:
            if unsettled and ((result is None and too_soon) or open_ended):
                if open_ended and result is not None:
                    await settle(
                        deps, uow, SYSTEM, payment, attempt_id, result, may_retry=False, reconcile_at=later
                    )
                held = await uow.payments.release_attempt(self.worker, attempt_id, due=later)
                report.deferred += 1
            else:
                await settle(deps, uow, SYSTEM, payment, attempt_id, result, may_retry=False)
                held = await uow.payments.complete_attempt(self.worker, attempt_id)
                report.settled += 1
            if not held:
                report.lost += 1  # another worker has it now: it records the outcome
                return
            await uow.commit()

    async def _release(self, attempt_id: str) -> None:
        async with self._deps.new_uow() as uow:
            due = self._clock.now() + self._deps.reconcile_after
            await uow.payments.release_attempt(self.worker, attempt_id, due=due)
            await uow.commit()

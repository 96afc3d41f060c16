"""The refund protocol, the same shape as a charge's (collect.py): commit the intent, call the
gateway with no transaction open, record the answer in a new transaction.

1. Transaction 1 (`hold`, in use_cases.refund_payment's transaction, or a credit note's through
   credit_refunds.py): the refund is committed pending, its amount held against the payment (so
   concurrent refunds never exceed what was charged), due for the reconciler
   `TALLY_PAYMENT_RECONCILE_AFTER_SECONDS` later. Its id is its idempotency key at the gateway.
2. No transaction open (`send`): `gateway.refund(...)` under the refund's id; a transient failure
   or a missing answer is sent again with the same key, up to `retry_attempts` calls in all.
3. Transaction 2 (`settle_refund`, under the payment's row lock):
   - SUCCEEDED: the refund succeeded, the payment's refunded amount grows (`payment.refunded`).
   - DECLINED, or FAILED on every call: the refund failed and holds nothing any more
     (`payment.refund_failed`).
   - UNKNOWN or PENDING: the refund stays pending, its amount held, due for the reconciler again.
   The reconciler (reconciler.py) records its lookups with the same `settle_refund`: what the gateway
   refunded as above, and a refund the gateway never saw (once its call can no longer be on its way)
   failed with message `not_refunded`. A refund already settled is left as it is.

A refund gives money back on the payment; an invoice it paid stays paid (corrections to an invoice
are credit notes).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from billing_svc.payments import domain
from billing_svc.payments.collect import PaymentDeps, record_payment_change
from billing_svc.payments.domain import Payment, Refund, RefundStatus
from billing_svc.payments.gateways.port import RefundRequest, RefundResult
from billing_svc.payments.gateways.port import RefundStatus as GatewayRefundStatus
from billing_svc.payments.ports import PaymentRepository, PaymentsUnitOfWork
from core import ids
from core.principal import Caller

NOT_REFUNDED = "not_refunded"

_SETTLED = {
    GatewayRefundStatus.SUCCEEDED: RefundStatus.SUCCEEDED,
    GatewayRefundStatus.DECLINED: RefundStatus.FAILED,
    GatewayRefundStatus.FAILED: RefundStatus.FAILED,  # certainly not refunded (every time, inline)
}


async def hold(
    deps: PaymentDeps,
    payments: PaymentRepository,
    payment: Payment,
    amount_minor: int,
    reason: str,
    *,
    credit_note_id: str = "",
) -> Payment:
    """Step 1 in the caller's transaction, `payment` read under its row lock: a new refund of
    `amount_minor` pending and held on it, due for the reconciler should its answer never be recorded
    (a crash, a timeout). Refused (FailedPrecondition) beyond what is still refundable. The payment as
    saved; the new refund is its last."""
    domain.require_refundable(payment, amount_minor)
    now = deps.clock.now()
    refund = Refund(
        ids.new_id(domain.REFUND_ID_PREFIX),
        amount_minor,
        RefundStatus.PENDING,
        reason[: domain.MAX_REASON],
        now,
        credit_note_id=credit_note_id,
    )
    held = domain.with_refund(payment, refund, now)
    await payments.save(held, reconcile_at=now + deps.reconcile_after)
    return held


async def send(deps: PaymentDeps, caller: Caller, payment: Payment, refund: Refund) -> Payment:
    """Steps 2 and 3 for a refund committed pending: send it (again, under the same key, while the
    answer is a transient failure or none), then record the last answer."""
    gateway = deps.gateways.get(payment.gateway)
    request = RefundRequest(refund.id, payment.charge_reference, refund.amount_minor, payment.currency_code)
    delay = deps.retry_delay_seconds
    result = await gateway.refund(request)
    for _ in range(deps.retry_attempts - 1):
        if result.status not in (GatewayRefundStatus.FAILED, GatewayRefundStatus.UNKNOWN):
            break
        await deps.sleep(delay)
        delay *= 2
        result = await gateway.refund(request)  # the same key: never refunded twice
    deps.after_refund(result)
    async with deps.new_uow() as uow:
        done = await settle_refund(deps, uow, caller, payment.id, refund.id, result)
        await uow.commit()
    return done


async def settle_refund(
    deps: PaymentDeps,
    uow: PaymentsUnitOfWork,
    caller: Caller,
    payment_id: str,
    refund_id: str,
    result: RefundResult | None,
    *,
    reconcile_at: datetime | None = None,
) -> Payment:
    """Step 3 in the caller's transaction (send's own, or the reconciler's with its claim): the payment
    as recorded. `result` None means the gateway never saw the refund: certainly not refunded.
    What stays pending is the reconciler's at `reconcile_at` (else a reconcile delay from now)."""
    payment = await uow.payments.get(payment_id, for_update=True)
    refund = payment.refund(refund_id) if payment is not None else None
    if payment is None or refund is None:
        raise domain.payment_not_found(payment_id)
    if refund.status is not RefundStatus.PENDING:
        return payment  # settled already (the reconciler, or the inline answer, got there first)
    now = deps.clock.now()
    status = RefundStatus.FAILED if result is None else _SETTLED.get(result.status, RefundStatus.PENDING)
    answered = replace(
        refund,
        status=status,
        reference=(result.reference if result else None) or refund.reference,
        message=(NOT_REFUNDED if result is None else result.message)[: domain.MAX_MESSAGE],
    )
    done = domain.with_refund(payment, answered, now)
    if status is RefundStatus.PENDING:
        await uow.payments.save(done, reconcile_at=reconcile_at or now + deps.reconcile_after)
        return done
    await uow.payments.save(done, reconcile_at=None)
    action = "refunded" if status is RefundStatus.SUCCEEDED else "refund_failed"
    await record_payment_change(uow, caller, action, payment, done, refund=answered)
    return done

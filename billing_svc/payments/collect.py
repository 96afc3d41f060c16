"""The payment-attempt protocol: commit the intent, call the gateway with no transaction open, record
the answer in a new transaction.

1. Transaction 1 (`start`): the payment is inserted PENDING with its first attempt `in_flight`,
   `payment.created` is emitted, and both commit. An attempt's id is its idempotency key at the
   gateway, so whatever happens next, re-sending it can never charge twice.
2. No transaction open: `gateway.charge(...)` under the attempt's id.
3. Transaction 2 (`record_charge`): the answer is recorded on the attempt, under the payment's row
   lock (and its invoice's, taken first, in the order transaction 1 took them):
   - SUCCEEDED: the payment SUCCEEDED (`payment.succeeded`); a payment of an invoice is applied to
     it (`invoice.payment_recorded`, and `invoice.paid` when paid in full).
   - DECLINED: the payment FAILED with the decline code (`payment.failed`; with an invoice,
     `invoice.payment_failed`). Never retried: a decline is the gateway's answer.
   - FAILED (certainly not charged): retried at once with a NEW attempt, after a short doubling
     delay, up to `retry_attempts` calls in all. When the last one fails too, the payment is FAILED
     with failure_code `gateway_unavailable` (`payment.failed`, but no `invoice.payment_failed`:
     the customer's card was never tried, so dunning should retry later rather than tell them).
   - UNKNOWN (no answer: it may have charged): retried with the SAME attempt (same key) within the
     same budget; still unknown after that, the attempt stays `unknown` and the payment PENDING,
     for the reconciler.
   - PENDING (accepted, not final): the attempt stays `pending`, for the reconciler.
   An attempt already settled when its answer is recorded (the reconciler got there first) is left
   as it is: recording is idempotent.

Unsettled attempts (in_flight, unknown, pending) carry a `due_time`: once it passes, the reconciler
(reconciler.py) claims them and looks them up at their gateway.

`collect_invoice` is the entry point for workers (dunning): it runs all three steps itself and
opens no transaction of its caller's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from billing_svc.invoices import domain as invoices
from billing_svc.invoices import use_cases as invoice_use_cases
from billing_svc.payments import domain
from billing_svc.payments.domain import (
    Attempt,
    AttemptStatus,
    Payment,
    PaymentSettings,
    PaymentStatus,
    Refund,
)
from billing_svc.payments.gateways.port import ChargeRequest, ChargeResult, ChargeStatus, RefundResult
from billing_svc.payments.gateways.registry import GatewayRegistry
from billing_svc.payments.ports import PaymentsUnitOfWork
from core import ids
from core.clock import Clock
from core.errors import FailedPrecondition
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import Caller

log = logging.getLogger("tally.payments")

PAYMENT_CODEC = Codec(Payment.to_dict, Payment.from_dict)
SETTINGS_CODEC = Codec(PaymentSettings.to_dict, PaymentSettings.from_dict)
GATEWAY_UNAVAILABLE = "gateway_unavailable"
NOT_CHARGED = "not_charged"


@dataclass(frozen=True)
class PaymentDeps:
    new_uow: Callable[[], PaymentsUnitOfWork]
    new_reader: Callable[[], PaymentsUnitOfWork]
    clock: Clock  # wall time: payment records, attempt due times, request id retention
    page_tokens: PageTokens
    gateways: GatewayRegistry
    retry_attempts: int = 3
    retry_delay_seconds: float = 0.2
    reconcile_after: timedelta = timedelta(seconds=60)
    gateway_timeout: timedelta = timedelta(seconds=10)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    # Called right after each charge returns, before its answer is recorded (the crash tests' hook).
    after_charge: Callable[[ChargeResult], None] = lambda result: None
    # Called right after a refund's last call returns, before its answer is recorded (the same hook).
    after_refund: Callable[[RefundResult], None] = lambda result: None
    runner: IdempotentRunner[PaymentsUnitOfWork, Payment] = field(init=False, repr=False)
    settings_runner: IdempotentRunner[PaymentsUnitOfWork, PaymentSettings] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runner", IdempotentRunner(self.new_uow, self.clock, codec=PAYMENT_CODEC))
        runner = IdempotentRunner(self.new_uow, self.clock, codec=SETTINGS_CODEC)
        object.__setattr__(self, "settings_runner", runner)


class CollectionOutcome(StrEnum):
    PAID = "paid"
    DECLINED = "declined"
    PENDING = "pending"  # unknown or pending at the gateway: the reconciler settles it
    NOTHING_DUE = "nothing_due"
    GATEWAY_UNAVAILABLE = "gateway_unavailable"  # failed transiently every time, or the breaker is open


@dataclass(frozen=True)
class Collection:
    outcome: CollectionOutcome
    payment: Payment | None  # None when nothing was charged (nothing due, or a payment pending)


@dataclass(frozen=True)
class CollectInvoice:
    """The command of a collection (its fingerprint under a request_id)."""

    invoice_id: str
    payment_method: str


class _NoCharge(Exception):
    """Raised inside transaction 1 when there is nothing to charge: rolls it (and its key) back."""

    def __init__(self, outcome: CollectionOutcome):
        super().__init__(outcome.value)
        self.outcome = outcome


def event_payload(payment: Payment) -> dict[str, object]:
    return {
        "id": payment.id,
        "account_id": payment.account_id,
        "invoice_id": payment.invoice_id,
        "status": payment.status.value,
        "currency_code": payment.currency_code,
        "amount_minor": payment.amount_minor,
        "amount_refunded_minor": payment.amount_refunded_minor,
        "gateway": payment.gateway,
        "failure_code": payment.failure_code,
    }


async def record_payment_change(
    uow: PaymentsUnitOfWork,
    caller: Caller,
    action: str,
    before: Payment | None,
    after: Payment,
    *,
    refund: Refund | None = None,
) -> None:
    """The audit row and the `payment.<action>` event of one change (`refund`: the refund settled)."""
    changes: dict[str, object] = {"status": after.status.value}
    if before is None or before.status is not after.status:
        changes = {"status": [before.status.value if before else None, after.status.value]}
    payload = event_payload(after)
    if refund is not None:
        settled = {"id": refund.id, "status": refund.status.value, "amount_minor": refund.amount_minor}
        changes["refund"] = payload["refund"] = settled
        changes["amount_refunded_minor"] = after.amount_refunded_minor
    await uow.audit.record(
        caller,
        time=after.update_time,
        resource_type=domain.RESOURCE_TYPE,
        resource_id=after.id,
        action=action,
        changes=changes,
    )
    uow.emit(f"payment.{action}", (domain.RESOURCE_TYPE, after.id), payload)


async def payment_method_for(
    uow: PaymentsUnitOfWork, account_id: str, given: str
) -> tuple[PaymentSettings, str]:
    settings = await uow.payment_settings.get(account_id) or PaymentSettings(account_id)
    method = given or settings.default_payment_method
    if not method:
        raise FailedPrecondition(
            f"account {account_id!r} has no default payment method: name one, or set it with "
            "UpdatePaymentSettings",
            reason="PAYMENT_METHOD_REQUIRED",
            metadata={"account_id": account_id},
        )
    return settings, method


async def start(
    deps: PaymentDeps,
    uow: PaymentsUnitOfWork,
    caller: Caller,
    *,
    account_id: str,
    currency_code: str,
    amount_minor: int,
    invoice_id: str,
    payment_method: str,
    description: str,
) -> Payment:
    """Transaction 1, in the caller's transaction: the payment PENDING with its attempt in flight.
    The gateway is chosen (and checked to be configured) before anything is written."""
    settings, method = await payment_method_for(uow, account_id, payment_method)
    gateway = deps.gateways.choose(settings.gateway, currency_code)
    now = deps.clock.now()
    payment = Payment(
        id=ids.new_id(domain.ID_PREFIX),
        account_id=account_id,
        invoice_id=invoice_id,
        currency_code=currency_code,
        amount_minor=amount_minor,
        status=PaymentStatus.PENDING,
        gateway=gateway,
        payment_method=method,
        description=description,
        create_time=now,
        update_time=now,
        attempts=(_new_attempt(now),),
    )
    await uow.payments.add(payment, reconcile_at=now + deps.reconcile_after)
    await record_payment_change(uow, caller, "created", None, payment)
    return payment


def _new_attempt(now: datetime) -> Attempt:
    return Attempt(id=ids.new_id(domain.ATTEMPT_ID_PREFIX), status=AttemptStatus.IN_FLIGHT, create_time=now)


async def drive(
    deps: PaymentDeps, caller: Caller, payment: Payment, metadata: Mapping[str, str] | None = None
) -> Payment:
    """Steps 2 and 3 for a payment whose last attempt is in flight: charge, record, retry."""
    gateway = deps.gateways.get(payment.gateway)
    attempt: Attempt | None = payment.attempts[-1]
    delay = deps.retry_delay_seconds
    calls = 0
    while attempt is not None:
        calls += 1
        request = ChargeRequest(
            idempotency_key=attempt.id,
            amount_minor=payment.amount_minor,
            currency_code=payment.currency_code,
            payment_method=payment.payment_method,
            description=payment.description,
            metadata={**(metadata or {}), "tally_payment_id": payment.id},
        )
        result = await gateway.charge(request)
        deps.after_charge(result)
        payment, attempt = await record_charge(
            deps, caller, payment, attempt.id, result, may_retry=calls < deps.retry_attempts
        )
        if attempt is not None:
            await deps.sleep(delay)
            delay *= 2
    return payment


async def record_charge(
    deps: PaymentDeps,
    caller: Caller,
    payment: Payment,
    attempt_id: str,
    result: ChargeResult | None,
    *,
    may_retry: bool,
    reconcile_at: datetime | None = None,
) -> tuple[Payment, Attempt | None]:
    """Step 3 in a transaction of its own: the payment as recorded, and the attempt to send next
    (None: settled, or left to the reconciler). `result` None means the gateway never saw the
    attempt (a lookup found nothing): certainly not charged."""
    async with deps.new_uow() as uow:
        outcome = await settle(
            deps, uow, caller, payment, attempt_id, result, may_retry=may_retry, reconcile_at=reconcile_at
        )
        await uow.commit()
    return outcome


async def settle(
    deps: PaymentDeps,
    uow: PaymentsUnitOfWork,
    caller: Caller,
    payment: Payment,
    attempt_id: str,
    result: ChargeResult | None,
    *,
    may_retry: bool,
    reconcile_at: datetime | None = None,
) -> tuple[Payment, Attempt | None]:
    """What `record_charge` does, in the caller's transaction (the reconciler's, with its claim)."""
    invoice = None
    if payment.invoice_id:  # the invoice's lock first, as transaction 1 took it
        invoice = await uow.invoices.get(payment.invoice_id, for_update=True)
    current = await uow.payments.get(payment.id, for_update=True)
    if current is None:
        raise LookupError(f"payment {payment.id} is missing")
    attempt = current.attempt(attempt_id)
    if (
        attempt is None
        or attempt.status not in domain.UNSETTLED
        or current.status is not PaymentStatus.PENDING
    ):
        return current, None  # settled already (the reconciler, or a concurrent retry)
    now = deps.clock.now()
    step = _Step(uow, caller, invoice, current, now, reconcile_at or now + deps.reconcile_after)
    status = ChargeStatus.FAILED if result is None else result.status
    message = NOT_CHARGED if result is None else result.message
    answered = replace(
        attempt,
        decline_code=(result.decline_code or "") if result else "",
        message=message[: domain.MAX_MESSAGE],
        reference=(result.reference or attempt.reference) if result else attempt.reference,
    )
    if status is ChargeStatus.SUCCEEDED:
        return await step.succeeded(answered), None
    if status is ChargeStatus.DECLINED:
        return await step.declined(answered), None
    if status is ChargeStatus.FAILED:
        gave_up = NOT_CHARGED if result is None else GATEWAY_UNAVAILABLE
        return await step.failed(answered, retry=may_retry, code=gave_up)
    # UNKNOWN or PENDING: nothing is settled; the same attempt again (UNKNOWN, while the budget
    # lasts), else the reconciler's once `later` has passed.
    kept = AttemptStatus.PENDING if status is ChargeStatus.PENDING else AttemptStatus.UNKNOWN
    unsettled = replace(answered, status=kept)
    done = domain.with_attempt(current, unsettled, now)
    await uow.payments.save(done, reconcile_at=step.later)
    return done, unsettled if status is ChargeStatus.UNKNOWN and may_retry else None


@dataclass(frozen=True)
class _Step:
    """Recording one answer on a locked payment (and its locked invoice), in one transaction."""

    uow: PaymentsUnitOfWork
    caller: Caller
    invoice: invoices.Invoice | None
    current: Payment
    now: datetime
    later: datetime  # when what stays unsettled is the reconciler's

    async def succeeded(self, attempt: Attempt) -> Payment:
        finished = replace(attempt, status=AttemptStatus.SUCCEEDED, finish_time=self.now)
        done = domain.succeeded(domain.with_attempt(self.current, finished, self.now), self.now)
        await self._record(done, "succeeded")
        if self.invoice is not None:
            await _apply_to_invoice(self.uow, self.caller, self.invoice, done)
        return done

    async def declined(self, attempt: Attempt) -> Payment:
        finished = replace(attempt, status=AttemptStatus.DECLINED, finish_time=self.now)
        code = finished.decline_code or "declined"
        payment = domain.with_attempt(self.current, finished, self.now)
        done = domain.failed(payment, code, finished.message, self.now)
        await self._record(done, "failed")
        if self.invoice is not None:
            payload = {
                **invoice_use_cases.event_payload(self.invoice),
                "payment_id": done.id,
                "decline_code": code,
            }
            self.uow.emit("invoice.payment_failed", (invoices.RESOURCE_TYPE, self.invoice.id), payload)
        return done

    async def failed(self, attempt: Attempt, *, retry: bool, code: str) -> tuple[Payment, Attempt | None]:
        """Certainly not charged: a new attempt when the budget allows, else the payment failed."""
        finished = replace(attempt, status=AttemptStatus.FAILED, finish_time=self.now)
        done = domain.with_attempt(self.current, finished, self.now)
        if retry:
            following = _new_attempt(self.now)
            done = domain.with_attempt(done, following, self.now)
            await self.uow.payments.save(done, reconcile_at=self.later)
            return done, following
        done = domain.failed(done, code, finished.message, self.now)
        await self._record(done, "failed")
        return done, None

    async def _record(self, done: Payment, action: str) -> None:
        await self.uow.payments.save(done, reconcile_at=None)
        await record_payment_change(self.uow, self.caller, action, self.current, done)


async def _apply_to_invoice(
    uow: PaymentsUnitOfWork, caller: Caller, invoice: invoices.Invoice, payment: Payment
) -> None:
    """A succeeded payment of an invoice pays (part of) it, when the invoice still takes it."""
    payable = invoice.status in (invoices.InvoiceStatus.OPEN, invoices.InvoiceStatus.UNCOLLECTIBLE)
    if not payable or not 0 < payment.amount_minor <= invoice.amount_remaining_minor:
        # Paid out of band or voided meanwhile: the money was taken all the same, and is kept on the
        # payment, to be refunded by someone who decides.
        log.warning(
            "payment %s succeeded for invoice %s, which no longer takes %s minor units (it is %s, "
            "%s remaining); not applied",
            payment.id,
            invoice.id,
            payment.amount_minor,
            invoice.status.value,
            invoice.amount_remaining_minor,
        )
        return
    now = (await uow.clocks.time_for(invoice.account_id)).now
    done = invoices.paid(invoice, payment.amount_minor, now)
    await uow.invoices.save(done)
    await invoice_use_cases.record_change(uow, caller, "payment_recorded", invoice, done)


def outcome_of(payment: Payment) -> CollectionOutcome:
    if payment.status is PaymentStatus.SUCCEEDED:
        return CollectionOutcome.PAID
    if payment.status is PaymentStatus.PENDING:
        return CollectionOutcome.PENDING
    if payment.failure_code == GATEWAY_UNAVAILABLE:
        return CollectionOutcome.GATEWAY_UNAVAILABLE
    return CollectionOutcome.DECLINED


async def collect(deps: PaymentDeps, caller: Caller, invoice_id: str, payment_method: str = "") -> Collection:
    """Charge what remains of an invoice (see `collect_invoice`), and say how it went."""
    invoice_use_cases.require_id(invoice_id, "invoice_id")

    async def intent(uow: PaymentsUnitOfWork) -> Payment:
        invoice = await invoice_use_cases.load(uow, caller, invoice_id, for_update=True)
        if invoice.status not in (invoices.InvoiceStatus.OPEN, invoices.InvoiceStatus.UNCOLLECTIBLE):
            if invoice.status is invoices.InvoiceStatus.DRAFT:
                invoices.require(invoice, invoices.Action.PAY)  # a draft is not to be charged: an error
            raise _NoCharge(CollectionOutcome.NOTHING_DUE)
        if await uow.payments.pending_for_invoice(invoice.id):
            raise _NoCharge(CollectionOutcome.PENDING)  # one charge at a time per invoice
        if invoice.amount_remaining_minor <= 0:
            raise _NoCharge(CollectionOutcome.NOTHING_DUE)
        return await start(
            deps,
            uow,
            caller,
            account_id=invoice.account_id,
            currency_code=invoice.currency_code,
            amount_minor=invoice.amount_remaining_minor,
            invoice_id=invoice.id,
            payment_method=payment_method,
            description=f"Invoice {invoice.number}",
        )

    try:
        outcome = await deps.runner.run(caller, CollectInvoice(invoice_id, payment_method), intent)
    except _NoCharge as nothing:
        return Collection(nothing.outcome, None)
    if outcome.replayed:
        payment = await reload(deps, outcome.value.id)
    else:
        payment = await drive(deps, caller, outcome.value)
    return Collection(outcome_of(payment), payment)


async def collect_invoice(
    deps: PaymentDeps, caller: Caller, invoice_id: str, *, payment_method: str | None = None
) -> CollectionOutcome:
    """Charge the whole amount remaining of a finalized invoice through the account's gateway with
    `payment_method` (else the account's default), and say how it went.

    Runs the protocol's transactions itself: call it with no transaction open. NOTHING_DUE for an
    invoice paid, void or with nothing remaining; PENDING, without charging, while another payment
    of the invoice is pending. Raises FailedPrecondition when the account has no payment method or
    its gateway is not configured (nothing is written then), NotFound for an unknown invoice.
    """
    return (await collect(deps, caller, invoice_id, payment_method or "")).outcome


async def reload(deps: PaymentDeps, payment_id: str) -> Payment:
    async with deps.new_reader() as uow:
        payment = await uow.payments.get(payment_id)
    if payment is None:
        raise domain.payment_not_found(payment_id)
    return payment

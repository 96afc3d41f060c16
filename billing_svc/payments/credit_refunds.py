"""Credit notes refunded on their invoice's payments (refund method PAYMENT_REFUND): the invoices'
`CreditRefunds` port, filled with the payments' own refund path (refunds.py).

`hold` runs in the credit note's transaction, which holds the invoice's row lock: the invoice's
succeeded payments are read under their row locks (the invoice's lock first, then the payments',
the order a charge's recording takes them), and the post-payment part is split over them newest
payment first, each taking what it can still refund (`Payment.refundable_minor`: less what its
refunds took or hold), as one pending refund per payment keyed by the credit note
(`payment_refunds` is unique on payment and credit note). A total the payments cannot give back
is refused before anything is held, and the rollback takes the credit note with it.

Why newest first: Stripe's `refund_amount` on a credit note creates a refund "for the charge
associated with the invoice" (https://docs.stripe.com/api/credit_notes/create): one charge, so an
invoice paid once behaves the same here, and Stripe documents no split over several payments (it
links refunds made apart with `refunds` instead). With several, the newest charge is the one most
likely still inside the card network's refund window and on a card still valid; the older ones
are reached only for what it cannot give back.

`send` runs after the commit with no transaction open, each refund through `refunds.send` exactly
as RefundPayment sends its own (same key on every call, the answer recorded under the payment's
lock); a refund whose answer is lost stays pending for the reconciler, which looks it up by its id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from billing_svc.invoices.credit_notes import CreditNote
from billing_svc.invoices.ports import InvoicesUnitOfWork
from billing_svc.payments import refunds
from billing_svc.payments.collect import PaymentDeps
from billing_svc.payments.domain import RefundStatus
from billing_svc.payments.ports import PaymentRepository
from core.errors import FailedPrecondition
from core.principal import Caller

log = logging.getLogger("tally.payments")

FIELD = "refund_method"


@runtime_checkable
class _WithPayments(Protocol):
    """A unit of work that also holds the payments (module.py's SqlBillingUnitOfWork)."""

    @property
    def payments(self) -> PaymentRepository: ...


def split(refundable: Sequence[tuple[str, int]], amount_minor: int) -> list[tuple[str, int]]:
    """(payment id, amount) of the refunds giving back `amount_minor`, taking from each of
    `refundable` (payment id, what it can still refund, in the order to take them) what it can
    until the amount is covered. Pure; the caller has checked that the sum covers it."""
    taken: list[tuple[str, int]] = []
    left = amount_minor
    for payment_id, available in refundable:
        if left == 0:
            break
        part = min(left, available)
        if part > 0:
            taken.append((payment_id, part))
            left -= part
    return taken


class CreditNoteRefunds:
    """Fills billing_svc.invoices.ports.CreditRefunds with the payments' refunds."""

    def __init__(self, deps: PaymentDeps):
        self._deps = deps

    async def hold(self, uow: InvoicesUnitOfWork, caller: Caller, note: CreditNote) -> tuple[str, ...]:
        if not isinstance(uow, _WithPayments):
            raise TypeError(f"a credit note's refunds need the payments' repository on {type(uow).__name__}")
        repository = uow.payments
        payments = await repository.succeeded_for_invoice(note.invoice_id)
        wanted = note.post_payment_minor
        refundable = sum(max(p.refundable_minor, 0) for p in payments)
        metadata = {"field": FIELD, "invoice_id": note.invoice_id, "refundable_minor": str(refundable)}
        if refundable == 0:
            raise FailedPrecondition(
                f"{FIELD} REFUND_METHOD_PAYMENT_REFUND needs a payment to refund, and invoice "
                f"{note.invoice_id!r} has no succeeded payment with anything left to refund: credit the "
                "balance (REFUND_METHOD_CREDIT_BALANCE) or record a refund outside Tally "
                "(REFUND_METHOD_OUT_OF_BAND_REFUND)",
                reason="NO_REFUNDABLE_PAYMENT",
                metadata=metadata,
            )
        if wanted > refundable:
            raise FailedPrecondition(
                f"{FIELD} REFUND_METHOD_PAYMENT_REFUND would refund {wanted} minor units, and the "
                f"payments of invoice {note.invoice_id!r} can refund only {refundable} more (what they "
                "charged less what their refunds gave back or hold)",
                reason="REFUND_EXCEEDS_PAYMENTS",
                metadata=metadata,
            )
        by_id = {payment.id: payment for payment in payments}
        reason = f"credit note {note.number} ({note.reason.value})"
        made: list[str] = []
        for payment_id, minor in split([(p.id, p.refundable_minor) for p in payments], wanted):
            held = await refunds.hold(
                self._deps, repository, by_id[payment_id], minor, reason, credit_note_id=note.id
            )
            made.append(held.refunds[-1].id)
        return tuple(made)

    async def send(self, caller: Caller, refund_ids: Sequence[str]) -> None:
        for refund_id in refund_ids:
            try:
                async with self._deps.new_reader() as uow:
                    payment = await uow.payments.with_refund(refund_id)
                refund = payment.refund(refund_id) if payment is not None else None
                if payment is None or refund is None or refund.status is not RefundStatus.PENDING:
                    continue
                await refunds.send(self._deps, caller, payment, refund)
            except Exception:
                # Committed pending: the reconciler settles it. The other refunds are still sent.
                log.exception("a credit note's refund %s was not sent; the reconciler settles it", refund_id)

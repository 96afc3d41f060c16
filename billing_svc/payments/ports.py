"""What the payment use cases need from storage, as protocols."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from billing_svc.invoices.ports import InvoicesUnitOfWork
from billing_svc.payments.domain import Payment, PaymentSettings, PaymentStatus


class PaymentRepository(Protocol):
    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None: ...

    async def add(self, payment: Payment, *, reconcile_at: datetime) -> None:
        """A new payment; its unsettled attempts are the reconciler's from `reconcile_at`."""
        ...

    async def save(self, payment: Payment, *, reconcile_at: datetime | None) -> None:
        """The payment as it now is; its unsettled attempts and pending refunds are the reconciler's
        from `reconcile_at`. None: unsettled attempts are no one's, pending refunds keep their time."""
        ...

    async def claim_due_attempts(
        self, worker: str, *, now: datetime, lease: timedelta, limit: int
    ) -> list[tuple[str, str]]:
        """Claim up to `limit` unsettled attempts due at `now` (core.claims: SKIP LOCKED), for
        `worker` until `now + lease`: their (payment id, attempt id), oldest due first."""
        ...

    async def complete_attempt(self, worker: str, attempt_id: str) -> int:
        """The attempt wants no more work; 0 when `worker` no longer holds its claim."""
        ...

    async def release_attempt(self, worker: str, attempt_id: str, *, due: datetime) -> int:
        """Give the attempt back, due again at `due`; 0 when `worker` no longer holds its claim."""
        ...

    async def claim_due_refunds(
        self, worker: str, *, now: datetime, lease: timedelta, limit: int
    ) -> list[tuple[str, str]]:
        """Claim up to `limit` pending refunds due at `now`, as `claim_due_attempts` claims attempts:
        their (payment id, refund id), oldest due first."""
        ...

    async def complete_refund(self, worker: str, refund_id: str) -> int:
        """The refund wants no more work; 0 when `worker` no longer holds its claim."""
        ...

    async def release_refund(self, worker: str, refund_id: str, *, due: datetime) -> int:
        """Give the refund back, due again at `due`; 0 when `worker` no longer holds its claim."""
        ...

    async def with_attempt(self, attempt_id: str) -> Payment | None:
        """The payment the attempt belongs to (unlocked), None when there is no such attempt."""
        ...

    async def with_refund(self, refund_id: str) -> Payment | None:
        """The payment the refund belongs to (unlocked), None when there is no such refund."""
        ...

    async def succeeded_for_invoice(self, invoice_id: str) -> list[Payment]:
        """The invoice's succeeded payments with their refunds, newest first, each row locked until
        the transaction ends (a credit note's refunds are held on them)."""
        ...

    async def pending_for_invoice(self, invoice_id: str) -> list[Payment]:
        """The invoice's payments still pending (without their attempts and refunds)."""
        ...

    async def list_payments(
        self,
        *,
        account_id: str,
        invoice_id: str,
        statuses: Sequence[PaymentStatus],
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Payment]:
        """Newest first; an empty account_id or invoice_id does not filter."""
        ...


class PaymentSettingsRepository(Protocol):
    async def get(self, account_id: str) -> PaymentSettings | None: ...

    async def put(self, settings: PaymentSettings) -> None: ...


class GatewayEventRepository(Protocol):
    async def add(self, gateway: str, event_id: str, *, received_time: datetime, outcome: str) -> bool:
        """Record the event; False when it was recorded before (a redelivery). On PostgreSQL a
        concurrent delivery of the same event waits for this transaction, then sees it recorded."""
        ...


class PaymentsUnitOfWork(InvoicesUnitOfWork, Protocol):
    """The invoices' unit of work (a payment of an invoice is applied to it in the same
    transaction), plus the payments, the accounts' payment settings and the gateways' events."""

    @property
    def payments(self) -> PaymentRepository: ...

    @property
    def payment_settings(self) -> PaymentSettingsRepository: ...

    @property
    def gateway_events(self) -> GatewayEventRepository: ...

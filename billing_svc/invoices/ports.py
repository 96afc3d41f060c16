"""What the invoice use cases need from storage, as protocols."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from billing_svc.clocks.account_time import AccountClocks
from billing_svc.invoices.credit_notes import CreditNote
from billing_svc.invoices.domain import Invoice, InvoiceStatus, TimeRange, UsageBasis
from billing_svc.invoices.usage_lines import PeriodUsage, RecordedUsage
from billing_svc.subscriptions.domain import PendingItem
from core.accounts import AccountDirectory
from core.audit import AuditLog
from core.idempotency import IdempotencyRepository
from core.principal import Caller


@dataclass(frozen=True)
class InvoicedPeriod:
    """A period invoice's period, [start, end), and when it was made (its account's time)."""

    invoice_id: str
    start: datetime
    end: datetime
    create_time: datetime


class InvoiceRepository(Protocol):
    async def get(self, invoice_id: str, *, for_update: bool = False) -> Invoice | None: ...

    async def add(
        self, invoice: Invoice, *, cycle_key: str | None = None, collect_from: datetime | None = None
    ) -> None:
        """A new invoice with its lines. `collect_from`: it is to be charged automatically from then
        (billing_svc/collection.py); saving it paid, void or uncollectible clears the schedule (and,
        void or uncollectible, a collection worker's claim on it)."""
        ...

    async def save(
        self, invoice: Invoice, *, lines_changed: bool = False, collect_from: datetime | None = None
    ) -> None:
        """The invoice's new state, in the same statement its `collect_from` schedule, as `add`'s."""
        ...

    async def list_for_account(
        self,
        *,
        account_id: str,
        statuses: Sequence[InvoiceStatus],
        subscription_id: str,
        created: TimeRange,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Invoice]:
        """Up to `limit` of the account's invoices, newest first (create_time, id), after `after`:
        of one of `statuses` (any when empty), of `subscription_id` (any when empty), created in
        `created`."""
        ...

    async def take_pending_items(
        self,
        account_id: str,
        invoice_id: str,
        *,
        before: datetime,
        limit: int,
        subscription_id: str | None = None,
    ) -> list[PendingItem]:
        """The account's pending items (of one subscription, if given) that start before `before` and
        are on no invoice, now marked as on `invoice_id`, oldest first. An item a concurrent invoice
        took is not returned."""
        ...

    async def release_pending_items(self, invoice_id: str, item_ids: Sequence[str]) -> None: ...

    async def cycle_invoice_exists(self, cycle_key: str) -> bool: ...

    async def period_invoices(self, account_id: str, start: datetime, end: datetime) -> list[InvoicedPeriod]:
        """The account's period invoices (reason PERIOD) that are not void and whose period overlaps
        [start, end), by period: what usage they cover (a voided one's is billable again)."""
        ...

    async def next_number(self, prefix: str) -> int:
        """The sequence's next number, taken under its row lock until the transaction ends."""
        ...

    async def number_invoice(self, invoice_id: str, prefix: str) -> str:
        """Give a stored invoice added without a number (finalized in this transaction) the next
        number of `prefix`'s sequence, taken under the sequence row's lock until the transaction
        ends; the number's text (billing_svc.invoices.domain.number_text)."""
        ...


class CreditBalances(Protocol):
    async def balance(self, account_id: str, currency_code: str) -> int:
        """The balance, its row locked until the transaction ends (0 when the account has none)."""
        ...

    async def change(
        self,
        account_id: str,
        currency_code: str,
        amount_minor: int,
        *,
        source: tuple[str, str],
        now: datetime,
    ) -> int:
        """Adds `amount_minor` (negative to use credit) and records the entry; the new balance."""
        ...


class CreditNoteRepository(Protocol):
    async def add(self, note: CreditNote) -> None: ...

    async def get(self, credit_note_id: str) -> CreditNote | None: ...

    async def list_notes(
        self, *, account_id: str, invoice_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[CreditNote]:
        """Newest first; an empty account_id or invoice_id does not filter."""
        ...


class PeriodUsageReader(Protocol):
    async def period_usage(self, account_id: str, basis: UsageBasis, subscription_id: str) -> PeriodUsage:
        """The plan version's metered charges with their meters' quantities over the basis' period
        (and the recorded-price records of that period that subscription `subscription_id` bills),
        read in the caller's transaction."""
        ...

    async def unsubscribed_recorded(
        self, account_id: str, start: datetime, end: datetime, billed: Sequence[tuple[datetime, datetime]]
    ) -> tuple[RecordedUsage, ...]:
        """Per meter (by code), the account's records with their own price timed in [start, end) that
        no subscription bills (outside the live time of each of its subscriptions) and that are not in
        one of the `billed` intervals, for a period invoice."""
        ...


class InvoicesUnitOfWork(Protocol):
    @property
    def invoices(self) -> InvoiceRepository: ...

    @property
    def balances(self) -> CreditBalances: ...

    @property
    def credit_notes(self) -> CreditNoteRepository: ...

    @property
    def period_usage(self) -> PeriodUsageReader: ...

    @property
    def accounts(self) -> AccountDirectory: ...

    @property
    def clocks(self) -> AccountClocks: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...

    def emit(self, event_type: str, resource: tuple[str, str], payload: Mapping[str, Any]) -> None: ...

    def last_write(self, step: Callable[[], Awaitable[None]]) -> None: ...


class WrittenOff(Protocol):
    """What follows when VoidInvoice or MarkInvoiceUncollectible ends the collection of an open
    invoice, in that transaction (not committed): billing_svc/collection.py `written_off`, which
    makes the past-due or unpaid subscription it bills active again when nothing else of it is
    overdue. `uow` is the one the use case runs on."""

    async def __call__(
        self, uow: InvoicesUnitOfWork, caller: Caller, invoice: Invoice, now: datetime
    ) -> None: ...


class CreditRefunds(Protocol):
    """Refund method PAYMENT_REFUND: the post-payment part of a credit note given back on its invoice's
    succeeded payments through their gateways, by the payments module's refund path
    (billing_svc/payments/credit_refunds.py, which module.py gives the invoice use cases; the
    invoices do not import the payments, which import them)."""

    async def hold(self, uow: InvoicesUnitOfWork, caller: Caller, note: CreditNote) -> tuple[str, ...]:
        """In the credit note's transaction (not committed), under its invoice's row lock: refunds of
        `note.post_payment_minor` in all, pending and held on the invoice's payments, each keyed by
        the credit note; their ids. FailedPrecondition naming `refund_method` when the payments
        cannot give that much back (nothing is written then: the transaction rolls back)."""
        ...

    async def send(self, caller: Caller, refund_ids: Sequence[str]) -> None:
        """After the credit note's commit, with no transaction open: each refund sent to its gateway
        and its answer recorded, as RefundPayment does; one left pending is the reconciler's."""
        ...

"""What the test clock use cases need from storage and from the subscriptions module, as protocols.
The SQL adapters are in repository.py; the work itself is billing_svc/subscriptions/work.py's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from billing_svc.clocks.domain import DueSubscription, TestClock
from core.principal import Caller


class TestClockRepository(Protocol):
    async def get(self, clock_id: str, *, for_update: bool = False) -> TestClock | None:
        """The clock with its accounts; `for_update` locks its row to the end of the transaction."""
        ...

    async def add(self, clock: TestClock) -> None: ...

    async def save(self, clock: TestClock) -> None:
        """Write back the clock's own columns (not its accounts) of a clock read in this transaction."""
        ...

    async def list(self, *, after: tuple[datetime, str] | None, limit: int) -> list[TestClock]:
        """Up to `limit` clocks in (create_time, id) order, after the position `after`."""
        ...

    async def delete(self, clock_id: str) -> None:
        """The clock and its attachments."""
        ...

    async def attach(self, clock_id: str, account_id: str, time: datetime) -> None:
        """Raises `account_on_test_clock` when a concurrent attach of the account won the race."""
        ...

    async def clock_of(self, account_id: str) -> str | None:
        """The id of the clock the account is attached to, if any."""
        ...

    async def has_billing(self, account_id: str) -> bool:
        """Whether the account has any subscription (in any state)."""
        ...

    async def next_due(self, clock_id: str, until: datetime) -> DueSubscription | None:
        """The clock's subscription whose work falls due first at or before `until` (by due time, then
        id), or None when nothing is due by then."""
        ...

    async def next_draft_due(self, clock_id: str, until: datetime) -> DueSubscription | None:
        """The clock's accounts' draft invoice whose grace period ends first at or before `until`
        (by that time, then id; `id` is the invoice's), or None."""
        ...

    async def delete_billing(self, account_ids: Iterable[str]) -> None:
        """Every subscription, phase and pending invoice item of these accounts; their draft
        invoices are no longer finalized when a grace period ends."""
        ...


class DoneWork(Protocol):
    """A piece of work the subscriptions module reports (its WorkDone), read-only."""

    @property
    def kind(self) -> str: ...

    @property
    def due_time(self) -> datetime: ...

    @property
    def account_id(self) -> str: ...

    @property
    def subscription_id(self) -> str: ...

    @property
    def item_ids(self) -> tuple[str, ...]: ...


U_contra = TypeVar("U_contra", contravariant=True)


class RunDueWork(Protocol[U_contra]):
    """billing_svc.subscriptions.work.run_due_work: every piece of work of one subscription due at or
    before `now`, inside the unit of work's open transaction, which it does not commit. `caller` is
    who the work's audit events name: whoever advanced the clock."""

    async def __call__(
        self, uow: U_contra, subscription_id: str, now: datetime, /, *, caller: Caller
    ) -> Sequence[DoneWork]: ...


class FinalizeDraft(Protocol[U_contra]):
    """billing_svc.billing_work.BillingWork.finalize_due_draft: finalize one draft invoice whose grace
    period has ended by `now`, inside the open transaction; whether it did."""

    async def __call__(self, uow: U_contra, invoice_id: str, now: datetime, /, *, caller: Caller) -> bool: ...


class DueCollection(Protocol):
    @property
    def invoice_id(self) -> str: ...

    @property
    def due_time(self) -> datetime: ...


class Collections(Protocol):
    """billing_svc.collection.ClockCollections: the automatic collection of the clock's invoices, which
    an advance runs in time order with the subscriptions' work (the gateway call outside any
    transaction)."""

    async def next_due(self, uow: object, clock_id: str, until: datetime) -> DueCollection | None:
        """In the step's transaction: the clock's invoice due for collection first by `until`."""
        ...

    async def claim(self, uow: object, invoice_id: str) -> bool:
        """In the step's transaction: hold it for this advance; False when another holds it."""
        ...

    async def collect(self, invoice_id: str, at: datetime, *, caller: Caller) -> str:
        """With no transaction open, after the step committed: charge it and record the outcome at `at`."""
        ...

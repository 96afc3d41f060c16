"""The billing work of one subscription boundary: the subscription's own steps, then its invoice.

`billing_work(invoice_deps)` is the `RunDueWork` that both the billing worker (billing_svc/worker.py)
and AdvanceTestClock run: the subscriptions module's `run_due_work` (renewals, trial ends,
scheduled changes, period-end cancels), then, in the same transaction, the cycle invoice of each
boundary it ran (billing_svc/invoices/cycle_use_cases.py `invoice_cycle`): the fees of the period
it starts, in advance, and the usage of the period it closed, in arrears. One transaction holds
the boundary and its invoice, so a crash leaves either both or neither, and a rerun after a crash
finds the boundary done and the invoice there.

The subscription use cases run the same through `BoundaryWork`: a change that catches up on a
boundary the worker has not run yet invoices it like the worker would, and a new subscription
(not trialing) gets the invoice of its first period at once, in the CreateSubscription transaction.

`finalize_due_drafts` finalizes the cycle invoices whose grace period has ended (the ones that
bill usage wait it out as drafts): the worker's pass for wall-clock accounts, the advance for a
test clock's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.domain import PlanVersion
from billing_svc.clocks.sql_unit_of_work import SqlTestClocksUnitOfWork
from billing_svc.invoices.cycle_use_cases import finalize_after_grace, invoice_cycle
from billing_svc.invoices.domain import UsageBasis
from billing_svc.invoices.ports import (
    CreditBalances,
    CreditNoteRepository,
    InvoiceRepository,
    PeriodUsageReader,
)
from billing_svc.invoices.repository import SqlCreditBalances, SqlCreditNoteRepository, SqlInvoiceRepository
from billing_svc.invoices.use_cases import InvoiceDeps
from billing_svc.payments.ports import PaymentRepository
from billing_svc.payments.repository import SqlPaymentRepository
from billing_svc.subscriptions.domain import State, Subscription
from billing_svc.subscriptions.unit_of_work import SubscriptionsUnitOfWork
from billing_svc.subscriptions.work import ClosedPeriod, WorkDone, WorkKind, closed_period, run_due_work
from billing_svc.usage.period_usage import SqlPeriodUsage
from core.principal import SYSTEM, Caller

# The boundaries that start a period someone pays for in advance, or close one billed in arrears.
INVOICED_KINDS = frozenset({WorkKind.RENEWAL, WorkKind.TRIAL_END, WorkKind.CANCELLATION})


class SqlBillingUnitOfWork(SqlTestClocksUnitOfWork):
    """Subscriptions, test clocks and invoices on one session: a boundary and its invoice commit together.
    The payments too: a credit note's refunds are held on them in its transaction
    (billing_svc/payments/credit_refunds.py)."""

    invoices: InvoiceRepository
    balances: CreditBalances
    credit_notes: CreditNoteRepository
    period_usage: PeriodUsageReader
    payments: PaymentRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.invoices = SqlInvoiceRepository(session)
        self.balances = SqlCreditBalances(session)
        self.credit_notes = SqlCreditNoteRepository(session)
        self.period_usage = SqlPeriodUsage(session)
        self.payments = SqlPaymentRepository(session)


def _basis(closed: ClosedPeriod | None) -> UsageBasis | None:
    if closed is None:
        return None
    return UsageBasis(closed.plan_id, closed.plan_version, closed.start, closed.end)


def _billing(uow: SubscriptionsUnitOfWork) -> SqlBillingUnitOfWork:
    if not isinstance(uow, SqlBillingUnitOfWork):  # module.py gives the subscriptions this one
        raise TypeError(f"boundary work needs a SqlBillingUnitOfWork, not {type(uow).__name__}")
    return uow


class BillingWork:
    """Runs a subscription's due work and invoices the boundaries it runs (a `RunDueWork`), and is
    the subscription use cases' `BoundaryWork`."""

    def __init__(self, invoices: InvoiceDeps):
        self._invoices = invoices

    async def __call__(
        self, uow: SqlBillingUnitOfWork, subscription_id: str, now: datetime, /, *, caller: Caller = SYSTEM
    ) -> Sequence[WorkDone]:
        done = await run_due_work(uow, subscription_id, now, caller=caller)
        invoiced: set[datetime] = set()
        for work in done:
            if work.kind in INVOICED_KINDS and work.due_time not in invoiced:
                invoiced.add(work.due_time)
                await invoice_cycle(
                    self._invoices,
                    uow,
                    caller,
                    account_id=work.account_id,
                    subscription_id=work.subscription_id,
                    at=work.due_time,
                    usage=_basis(work.closed),
                    recorded_only=work.closed is not None and work.closed.recorded_only,
                )
        return done

    async def run_due_work(
        self, uow: SubscriptionsUnitOfWork, subscription_id: str, now: datetime, *, caller: Caller
    ) -> Sequence[WorkDone]:
        return await self(_billing(uow), subscription_id, now, caller=caller)

    async def started(self, uow: SubscriptionsUnitOfWork, caller: Caller, subscription: Subscription) -> None:
        """The invoice of a new subscription's first period, unless it starts with a trial (whose
        end invoices it); finalized at once, like Stripe's first invoice."""
        if subscription.state is State.TRIALING:
            return
        await invoice_cycle(
            self._invoices,
            _billing(uow),
            caller,
            account_id=subscription.account_id,
            subscription_id=subscription.id,
            at=subscription.start_time,
        )

    async def canceled_now(
        self,
        uow: SubscriptionsUnitOfWork,
        caller: Caller,
        before: Subscription,
        plan: PlanVersion,
        at: datetime,
    ) -> None:
        """The final invoice of a cancel now with invoice_now (Stripe's `invoice_now`): the usage of
        the period up to `at` in arrears, as a period-end cancel's invoice bills it, and the
        subscription's pending items (the cancel's proration credit). Nothing owed: no invoice."""
        closed = closed_period(WorkKind.CANCELLATION, before, plan, at)
        await invoice_cycle(
            self._invoices,
            _billing(uow),
            caller,
            account_id=before.account_id,
            subscription_id=before.id,
            at=at,
            usage=_basis(closed),
            recorded_only=closed is not None and closed.recorded_only,
        )

    async def finalize_due_draft(
        self, uow: SqlBillingUnitOfWork, invoice_id: str, now: datetime, /, *, caller: Caller = SYSTEM
    ) -> bool:
        """Finalize one draft whose grace has ended by `now`; whether it did."""
        return await finalize_after_grace(self._invoices, uow, caller, invoice_id, now) is not None

"""The billing work of one subscription boundary: the subscription's own steps, then its invoice.

`billing_work(invoice_deps)` is the `RunDueWork` that both the billing worker (billing_svc/worker.py)
and AdvanceTestClock run: the subscriptions module's `run_due_work` (renewals, trial ends,
scheduled changes, period-end cancels), then, in the same transaction, the cycle invoice of each
renewal and trial end it ran (billing_svc/invoices/use_cases.py `invoice_cycle`), numbered and
finalized. One transaction holds the boundary and its invoice, so a crash leaves either both or
neither, and a rerun after a crash finds the boundary done and the invoice there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.clocks.sql_unit_of_work import SqlTestClocksUnitOfWork
from billing_svc.invoices.ports import CreditBalances, CreditNoteRepository, InvoiceRepository
from billing_svc.invoices.repository import SqlCreditBalances, SqlCreditNoteRepository, SqlInvoiceRepository
from billing_svc.invoices.use_cases import InvoiceDeps, invoice_cycle
from billing_svc.subscriptions.work import WorkDone, WorkKind, run_due_work
from core.principal import SYSTEM, Caller

# The boundaries that start a period someone pays for in advance.
INVOICED_KINDS = frozenset({WorkKind.RENEWAL, WorkKind.TRIAL_END})


class SqlBillingUnitOfWork(SqlTestClocksUnitOfWork):
    """Subscriptions, test clocks and invoices on one session: a boundary and its invoice commit together."""

    invoices: InvoiceRepository
    balances: CreditBalances
    credit_notes: CreditNoteRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.invoices = SqlInvoiceRepository(session)
        self.balances = SqlCreditBalances(session)
        self.credit_notes = SqlCreditNoteRepository(session)


class BillingWork:
    """Runs a subscription's due work and invoices the periods it starts (a `RunDueWork`)."""

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
                )
        return done

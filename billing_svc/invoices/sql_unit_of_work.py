"""The invoices' unit of work on SQL: one transaction, every repository on its session."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing_svc.clocks.account_time import AccountClocks, SqlAccountClocks
from billing_svc.invoices.ports import (
    CreditBalances,
    CreditNoteRepository,
    InvoiceRepository,
    PeriodUsageReader,
)
from billing_svc.invoices.repository import SqlCreditBalances, SqlCreditNoteRepository, SqlInvoiceRepository
from billing_svc.usage.period_usage import SqlPeriodUsage
from core.accounts import AccountDirectory, AccountDirectoryFactory
from core.audit import AuditLog, SqlAuditLog
from core.clock import Clock
from core.db import UnitOfWork
from core.idempotency import IdempotencyRepository, SqlIdempotencyRepository


class SqlInvoicesUnitOfWork(UnitOfWork):
    """Fills InvoicesUnitOfWork (billing_svc.invoices.ports)."""

    invoices: InvoiceRepository
    balances: CreditBalances
    credit_notes: CreditNoteRepository
    period_usage: PeriodUsageReader
    accounts: AccountDirectory
    clocks: AccountClocks
    idempotency: IdempotencyRepository
    audit: AuditLog

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        wall_clock: Clock,
        account_directory: AccountDirectoryFactory,
    ):
        super().__init__(sessions, clock=wall_clock)
        self._wall_clock = wall_clock
        self._account_directory = account_directory

    def _bind(self, session: AsyncSession) -> None:
        self.invoices = SqlInvoiceRepository(session)
        self.balances = SqlCreditBalances(session)
        self.credit_notes = SqlCreditNoteRepository(session)
        self.period_usage = SqlPeriodUsage(session)
        self.accounts = self._account_directory(session)
        self.clocks = SqlAccountClocks(session, self._wall_clock)
        self.idempotency = SqlIdempotencyRepository(session)
        self.audit = SqlAuditLog(session)

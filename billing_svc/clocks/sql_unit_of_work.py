"""The test clocks' unit of work on SQL: one transaction, every repository on its session.

It is built like the subscriptions module's SqlSubscriptionsUnitOfWork (same constructor, same
`accounts`, `clocks`, `idempotency` and `audit`), so that an advance can hand it to that module's
`run_due_work`. Once billing_svc/subscriptions/sql_unit_of_work.py exists on this branch, this class
subclasses it and binds only `test_clocks` on top.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing_svc.clocks.account_time import AccountClocks, SqlAccountClocks
from billing_svc.clocks.ports import TestClockRepository
from billing_svc.clocks.repository import SqlTestClockRepository
from core.accounts import AccountDirectory, AccountDirectoryFactory
from core.audit import AuditLog, SqlAuditLog
from core.clock import Clock
from core.db import UnitOfWork
from core.idempotency import IdempotencyRepository, SqlIdempotencyRepository


class SqlTestClocksUnitOfWork(UnitOfWork):
    """Fills billing_svc.clocks.unit_of_work.TestClocksUnitOfWork."""

    test_clocks: TestClockRepository
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
        self.test_clocks = SqlTestClockRepository(session)
        self.accounts = self._account_directory(session)
        self.clocks = SqlAccountClocks(session, self._wall_clock)
        self.idempotency = SqlIdempotencyRepository(session)
        self.audit = SqlAuditLog(session)

"""The subscriptions' unit of work on SQL: one transaction, every repository on its session."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing_svc.catalog.plan_reader import SqlPlanReader
from billing_svc.clocks.account_time import AccountClocks, SqlAccountClocks
from billing_svc.subscriptions.ports import PendingItemRepository, PlanVersions, SubscriptionRepository
from billing_svc.subscriptions.repository import SqlPendingItemRepository, SqlSubscriptionRepository
from core.accounts import AccountDirectory, AccountDirectoryFactory
from core.audit import AuditLog, SqlAuditLog
from core.cache import ReadCache
from core.clock import Clock
from core.db import UnitOfWork
from core.idempotency import IdempotencyRepository, SqlIdempotencyRepository


class SqlSubscriptionsUnitOfWork(UnitOfWork):
    """Fills SubscriptionsUnitOfWork (billing_svc.subscriptions.unit_of_work)."""

    subscriptions: SubscriptionRepository
    items: PendingItemRepository
    plans: PlanVersions
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
        cache: ReadCache | None = None,
    ):
        super().__init__(sessions, clock=wall_clock, cache=cache)
        self._wall_clock = wall_clock
        self._account_directory = account_directory

    def _bind(self, session: AsyncSession) -> None:
        self.subscriptions = SqlSubscriptionRepository(session)
        self.items = SqlPendingItemRepository(session)
        self.plans = SqlPlanReader(session)
        self.accounts = self._account_directory(session)
        self.clocks = SqlAccountClocks(session, self._wall_clock)
        self.idempotency = SqlIdempotencyRepository(session)
        self.audit = SqlAuditLog(session)

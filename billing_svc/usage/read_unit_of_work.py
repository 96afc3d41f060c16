"""The read side's unit of work: one snapshot over usage, meters, subscriptions, plans, accounts
and the account's clock, so that a summary's quantities, prices and period agree."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing_svc.catalog.plan_reader import SqlPlanReader
from billing_svc.catalog.repository import SqlMeterRepository
from billing_svc.clocks.account_time import SqlAccountClocks
from billing_svc.subscriptions.repository import SqlSubscriptionRepository
from billing_svc.usage.read_repository import SqlUsageReader
from core.accounts import AccountDirectory, AccountDirectoryFactory
from core.clock import Clock
from core.db import UnitOfWork


class SqlUsageReadUnitOfWork(UnitOfWork):
    """Fills billing_svc.usage.read_ports.UsageReadUnitOfWork."""

    usage: SqlUsageReader
    meters: SqlMeterRepository
    subscriptions: SqlSubscriptionRepository
    plans: SqlPlanReader
    accounts: AccountDirectory
    clocks: SqlAccountClocks

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
        self.usage = SqlUsageReader(session)
        self.meters = SqlMeterRepository(session)
        self.subscriptions = SqlSubscriptionRepository(session)
        self.plans = SqlPlanReader(session)
        self.accounts = self._account_directory(session)
        self.clocks = SqlAccountClocks(session, self._wall_clock)

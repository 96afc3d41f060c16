"""The usage unit of work on SQL: one transaction, every repository on its session."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing_svc.catalog.meter_reader import SqlMeterReader
from billing_svc.clocks.account_time import AccountClocks, SqlAccountClocks
from billing_svc.usage.ports import MeterLookup, UsageRepository
from billing_svc.usage.repository import SqlUsageRepository
from core.accounts import AccountDirectory, AccountDirectoryFactory
from core.clock import Clock
from core.db import UnitOfWork


class SqlUsageUnitOfWork(UnitOfWork):
    """Fills billing_svc.usage.unit_of_work.UsageUnitOfWork."""

    usage: UsageRepository
    meters: MeterLookup
    accounts: AccountDirectory
    clocks: AccountClocks

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        wall_clock: Clock,
        account_directory: AccountDirectoryFactory,
    ):
        super().__init__(sessions, clock=wall_clock)
        self._account_directory = account_directory
        self._wall = wall_clock

    def _bind(self, session: AsyncSession) -> None:
        self.usage = SqlUsageRepository(session)
        self.meters = SqlMeterReader(session)
        self.accounts = self._account_directory(session)
        self.clocks = SqlAccountClocks(session, self._wall)

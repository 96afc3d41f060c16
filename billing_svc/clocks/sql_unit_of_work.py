"""The test clocks' unit of work on SQL: the subscriptions' unit of work with the clocks on top.

An advance hands it to the subscriptions module's `run_due_work`, so the move of the clock and the
work it makes due are one transaction on one session.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.clocks.ports import TestClockRepository
from billing_svc.clocks.repository import SqlTestClockRepository
from billing_svc.subscriptions.sql_unit_of_work import SqlSubscriptionsUnitOfWork


class SqlTestClocksUnitOfWork(SqlSubscriptionsUnitOfWork):
    """Fills billing_svc.clocks.unit_of_work.TestClocksUnitOfWork."""

    test_clocks: TestClockRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.test_clocks = SqlTestClockRepository(session)

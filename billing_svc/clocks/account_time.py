"""An account's billing time, read inside the caller's transaction.

Billing logic asks for the time of the account it works on: the frozen time of the account's test
clock when it has one, else the wall clock. Reading it on the same session as the work means an
AdvanceTestClock (which locks the clock row while it moves it) and the work agree on "now".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.clocks.tables import TestClockAccountRow, TestClockRow
from core.clock import Clock


@dataclass(frozen=True)
class AccountTime:
    now: datetime
    test_clock_id: str | None  # None: the account is on the wall clock


class AccountClocks(Protocol):
    async def time_for(self, account_id: str) -> AccountTime: ...


class SqlAccountClocks:
    def __init__(self, session: AsyncSession, wall: Clock):
        self._session = session
        self._wall = wall

    async def time_for(self, account_id: str) -> AccountTime:
        statement = (
            select(TestClockRow.id, TestClockRow.frozen_time)
            .join(TestClockAccountRow, TestClockAccountRow.test_clock_id == TestClockRow.id)
            .where(TestClockAccountRow.account_id == account_id)
        )
        row = (await self._session.execute(statement)).one_or_none()
        if row is None:
            return AccountTime(now=self._wall.now(), test_clock_id=None)
        return AccountTime(now=row.frozen_time, test_clock_id=row.id)

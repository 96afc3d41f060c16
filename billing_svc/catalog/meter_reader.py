"""Meters as other billing modules read them, on their own transaction's session.

Usage recording resolves each event's `service` (a meter code) to its meter: one query for the
codes a whole batch names, and, only when one is unknown, one more for the codes there are.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.domain import Meter
from billing_svc.catalog.repository import meter_from_row
from billing_svc.catalog.tables import MeterRow


class SqlMeterReader:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def by_codes(self, codes: Collection[str]) -> dict[str, Meter]:
        """The meters (archived ones too) whose code is among `codes`, by code."""
        wanted = sorted(set(codes))
        if not wanted:
            return {}
        rows = await self._session.execute(select(MeterRow).where(MeterRow.code.in_(wanted)))
        return {row.code: meter_from_row(row) for row in rows.scalars()}

    async def active_codes(self, limit: int) -> list[str]:
        """Up to `limit` codes of meters that are not archived, in code order."""
        statement = (
            select(MeterRow.code).where(MeterRow.archive_time.is_(None)).order_by(MeterRow.code).limit(limit)
        )
        return list((await self._session.execute(statement)).scalars())

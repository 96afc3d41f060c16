# TEMPORARY STUB (uncommitted)
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.domain import PlanVersion


class SqlPlanReader:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def version(
        self, plan_id: str, version: int | None = None, *, lock: bool = False
    ) -> PlanVersion | None:
        raise NotImplementedError

    async def mark_in_use(self, plan_id: str, version: int) -> None:
        raise NotImplementedError

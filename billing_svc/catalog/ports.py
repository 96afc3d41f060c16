"""What the catalog's use cases need from storage, as protocols. The SQL adapters are in
repository.py (meters) and plan_repository.py (plans)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Protocol

from billing_svc.catalog.domain import Meter


class MeterRepository(Protocol):
    async def get(self, meter_id: str, *, for_update: bool = False) -> Meter | None: ...

    async def get_many(self, meter_ids: Collection[str]) -> dict[str, Meter]:
        """The meters among `meter_ids` that exist, by id (one query)."""
        ...

    async def add(self, meter: Meter) -> None:
        """Raises ALREADY_EXISTS (METER_CODE_TAKEN) when another meter has the code."""
        ...

    async def save(self, meter: Meter) -> None:
        """Write back a meter read in this transaction."""
        ...

    async def list(
        self, *, show_archived: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[Meter]:
        """Up to `limit` meters in (create_time, id) order, after the position `after`."""
        ...

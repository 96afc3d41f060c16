"""What the catalog's use cases need from storage, as protocols. The SQL adapters are in
repository.py (meters) and plan_repository.py (plans)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Protocol

from billing_svc.catalog.domain import Meter, PlanVersion


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


class PlanRepository(Protocol):
    async def get(
        self, plan_id: str, version: int | None = None, *, for_update: bool = False
    ) -> PlanVersion | None:
        """The plan at `version`, or at its latest; `for_update` locks the plan and that version."""
        ...

    async def exists(self, plan_id: str) -> bool: ...

    async def add(self, plan: PlanVersion) -> None:
        """A new plan at version 1; raises ALREADY_EXISTS (PLAN_CODE_TAKEN) when another has the code."""
        ...

    async def add_version(self, plan: PlanVersion) -> None:
        """`plan` as its new latest version (its plan fields written too), features included."""
        ...

    async def save(self, plan: PlanVersion, *, terms: bool, features: bool) -> None:
        """Write back a plan read in this transaction, and its version in place: its terms when
        `terms` (refused with ABORTED should the version be in use), its features when `features`."""
        ...

    async def list(
        self, *, show_archived: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[PlanVersion]:
        """Up to `limit` plans at their latest versions in (create_time, id) order, after `after`."""
        ...

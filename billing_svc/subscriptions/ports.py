"""What the subscription use cases need from storage and from the other domains, as protocols."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from billing_svc.catalog.domain import PlanVersion
from billing_svc.subscriptions.domain import Entitlement, PendingItem, Subscription


class SubscriptionRepository(Protocol):
    async def get(self, subscription_id: str, *, for_update: bool = False) -> Subscription | None: ...

    async def add(self, subscription: Subscription) -> None: ...

    async def save(self, subscription: Subscription) -> None: ...

    async def list(
        self, *, account_id: str | None, show_canceled: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[Subscription]: ...

    async def not_canceled(self, account_id: str) -> Sequence[Subscription]: ...

    async def record_phase(self, subscription: Subscription, at: datetime) -> None: ...

    async def entitlements(self, account_id: str) -> Sequence[Entitlement]: ...


class PendingItemRepository(Protocol):
    async def add_all(self, items: Sequence[PendingItem]) -> None: ...

    async def list(
        self,
        *,
        account_id: str,
        subscription_id: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
        show_invoiced: bool = False,
    ) -> list[PendingItem]: ...


class PlanVersions(Protocol):
    """The catalog, as subscriptions see it (billing_svc.catalog.plan_reader.SqlPlanReader)."""

    async def version(
        self, plan_id: str, version: int | None = None, *, lock: bool = False
    ) -> PlanVersion | None: ...

    async def mark_in_use(self, plan_id: str, version: int) -> None: ...

"""The subscription use cases' unit of work, as a protocol; SqlSubscriptionsUnitOfWork fills it."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from billing_svc.clocks.account_time import AccountClocks
from billing_svc.subscriptions.ports import PendingItemRepository, PlanVersions, SubscriptionRepository
from core.accounts import AccountDirectory
from core.audit import AuditLog
from core.db import AfterCommit
from core.idempotency import IdempotencyRepository


class SubscriptionsUnitOfWork(Protocol):
    @property
    def subscriptions(self) -> SubscriptionRepository: ...

    @property
    def items(self) -> PendingItemRepository: ...

    @property
    def plans(self) -> PlanVersions: ...

    @property
    def accounts(self) -> AccountDirectory: ...

    @property
    def clocks(self) -> AccountClocks: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...

    def after_commit(self, callback: AfterCommit) -> None: ...

    def invalidate_after_commit(self, *generations: str) -> None: ...

    def emit(self, event_type: str, resource: tuple[str, str], payload: Mapping[str, Any]) -> None: ...

"""The catalog's unit of work, as a protocol: one transaction with the repositories it needs.

Only ports here; the SQL unit of work that fills it is in sql_unit_of_work.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from billing_svc.catalog.ports import MeterRepository, PlanRepository
from core.audit import AuditLog
from core.db import AfterCommit
from core.idempotency import IdempotencyRepository


class CatalogUnitOfWork(Protocol):
    """Meters, plans, request ids and the audit log, in one transaction.

    Members are read-only properties so that fakes may use their own repository classes.
    """

    @property
    def meters(self) -> MeterRepository: ...

    @property
    def plans(self) -> PlanRepository: ...

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

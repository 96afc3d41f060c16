"""The catalog's unit of work on SQL: one transaction, every repository on its session."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.plan_repository import SqlPlanRepository
from billing_svc.catalog.ports import MeterRepository, PlanRepository
from billing_svc.catalog.repository import SqlMeterRepository
from core.audit import AuditLog, SqlAuditLog
from core.db import UnitOfWork
from core.idempotency import IdempotencyRepository, SqlIdempotencyRepository


class SqlCatalogUnitOfWork(UnitOfWork):
    """Fills billing_svc.catalog.unit_of_work.CatalogUnitOfWork."""

    meters: MeterRepository
    plans: PlanRepository
    idempotency: IdempotencyRepository
    audit: AuditLog

    def _bind(self, session: AsyncSession) -> None:
        self.meters = SqlMeterRepository(session)
        self.plans = SqlPlanRepository(session)
        self.idempotency = SqlIdempotencyRepository(session)
        self.audit = SqlAuditLog(session)

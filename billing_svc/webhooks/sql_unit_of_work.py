"""The webhook endpoints' unit of work on SQL: one transaction, the repositories on its session."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.webhooks.ports import WebhookRepository
from billing_svc.webhooks.repository import SqlWebhookRepository
from core.audit import AuditLog, SqlAuditLog
from core.db import UnitOfWork
from core.idempotency import IdempotencyRepository, SqlIdempotencyRepository


class SqlWebhooksUnitOfWork(UnitOfWork):
    """Fills billing_svc.webhooks.ports.WebhooksUnitOfWork."""

    webhooks: WebhookRepository
    idempotency: IdempotencyRepository
    audit: AuditLog

    def _bind(self, session: AsyncSession) -> None:
        self.webhooks = SqlWebhookRepository(session)
        self.idempotency = SqlIdempotencyRepository(session)
        self.audit = SqlAuditLog(session)

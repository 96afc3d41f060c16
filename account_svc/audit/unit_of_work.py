"""The SQL reader behind AuditReader: one session with the audit log on it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from core.audit import AuditLog, SqlAuditLog
from core.db import UnitOfWork


class SqlAuditReader(UnitOfWork):
    audit: AuditLog

    def _bind(self, session: AsyncSession) -> None:
        self.audit = SqlAuditLog(session)

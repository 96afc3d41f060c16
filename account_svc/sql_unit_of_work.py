"""The account service's unit of work on SQL: one transaction, every repository on its session."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from account_svc.identity.ports import IdentityRepository
from account_svc.identity.repository import SqlIdentityRepository
from account_svc.ports import AccountRepository, AccountSessions
from account_svc.repository import SqlAccountRepository
from core.audit import AuditLog, SqlAuditLog
from core.db import UnitOfWork
from core.idempotency import IdempotencyRepository, SqlIdempotencyRepository


class SqlAccountsUnitOfWork(UnitOfWork):
    """Fills both AccountsUnitOfWork and IdentityUnitOfWork (account_svc.unit_of_work)."""

    accounts: AccountRepository
    sessions: AccountSessions
    identity: IdentityRepository
    idempotency: IdempotencyRepository
    audit: AuditLog

    def _bind(self, session: AsyncSession) -> None:
        self.accounts = SqlAccountRepository(session)
        self.identity = SqlIdentityRepository(session)
        self.sessions = self.identity
        self.idempotency = SqlIdempotencyRepository(session)
        self.audit = SqlAuditLog(session)

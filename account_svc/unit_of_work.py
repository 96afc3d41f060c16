"""The account service's unit of work: one transaction with the repositories it needs."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from sqlalchemy.ext.asyncio import AsyncSession

from account_svc.identity.repository import IdentityRepository, SqlIdentityRepository
from account_svc.repository import AccountRepository, SqlAccountRepository
from core.audit import AuditLog, SqlAuditLog
from core.db import AfterCommit, UnitOfWork
from core.idempotency import IdempotencyRepository, SqlIdempotencyRepository


class AccountsUnitOfWork(Protocol):
    """What the account use cases need: accounts, request ids and the audit log.

    Members are read-only properties so that fakes may use their own repository classes.
    """

    @property
    def accounts(self) -> AccountRepository: ...

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

    def emit(self, event_type: str, resource: tuple[str, str], payload: Mapping[str, Any]) -> None: ...


class IdentityUnitOfWork(AccountsUnitOfWork, Protocol):
    """The identity use cases need users, sessions and service accounts as well."""

    @property
    def identity(self) -> IdentityRepository: ...


class SqlAccountsUnitOfWork(UnitOfWork):
    accounts: AccountRepository
    identity: IdentityRepository
    idempotency: IdempotencyRepository
    audit: AuditLog

    def _bind(self, session: AsyncSession) -> None:
        self.accounts = SqlAccountRepository(session)
        self.identity = SqlIdentityRepository(session)
        self.idempotency = SqlIdempotencyRepository(session)
        self.audit = SqlAuditLog(session)

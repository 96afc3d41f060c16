"""The account service's units of work, as protocols: one transaction with the repositories it needs.

Only ports here; the SQL unit of work that fills them is in sql_unit_of_work.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from account_svc.identity.ports import IdentityRepository
from account_svc.ports import AccountRepository, AccountSessions
from core.audit import AuditLog
from core.db import AfterCommit
from core.idempotency import IdempotencyRepository


class AccountsUnitOfWork(Protocol):
    """What the account use cases need: accounts, their users' sessions, request ids and the audit log.

    Members are read-only properties so that fakes may use their own repository classes.
    """

    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def sessions(self) -> AccountSessions: ...

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


class IdentityUnitOfWork(AccountsUnitOfWork, Protocol):
    """The identity use cases need users, sessions and service accounts as well."""

    @property
    def identity(self) -> IdentityRepository: ...

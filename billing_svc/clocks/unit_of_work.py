"""The test clock use cases' unit of work, as a protocol: one transaction with the repositories it needs.

Only ports here; the SQL unit of work that fills them is in sql_unit_of_work.py. The same unit of
work is handed to the subscriptions module's `run_due_work` during an advance, so the work and the
move of the clock are one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from billing_svc.clocks.ports import TestClockRepository
from core.accounts import AccountDirectory
from core.audit import AuditLog
from core.db import AfterCommit
from core.idempotency import IdempotencyRepository


class TestClocksUnitOfWork(Protocol):
    """Clocks, the account directory, request ids and the audit log, in one transaction.

    Members are read-only properties so that fakes may use their own repository classes.
    """

    @property
    def test_clocks(self) -> TestClockRepository: ...

    @property
    def accounts(self) -> AccountDirectory: ...

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

"""The usage unit of work, as a protocol: one transaction with what recording needs.

Only ports here; the SQL unit of work that fills it is in sql_unit_of_work.py.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from billing_svc.clocks.account_time import AccountClocks
from billing_svc.usage.ports import MeterLookup, UsageRepository
from core.accounts import AccountDirectory


class UsageUnitOfWork(Protocol):
    """Usage records, the meters they name, the accounts they belong to and those accounts' billing
    time (a test clock's, or the wall clock), in one transaction."""

    @property
    def usage(self) -> UsageRepository: ...

    @property
    def meters(self) -> MeterLookup: ...

    @property
    def accounts(self) -> AccountDirectory: ...

    @property
    def clocks(self) -> AccountClocks: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...

"""What the account use cases need from storage, as protocols. The SQL adapters are in repository.py;
the use-case tests stand in fakes (tests/unit/fakes.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from account_svc.domain import Account, AccountFilter


class AccountRepository(Protocol):
    async def get(self, account_id: str, *, for_update: bool = False) -> Account | None: ...

    async def email_in_use(self, email: str, *, excluding: str | None = None) -> bool: ...

    async def add(self, account: Account) -> None:
        """Raises `email_taken()` when another live account has the email."""
        ...

    async def save(self, account: Account) -> None:
        """Write back an account read in this transaction; raises `email_taken()` like `add`."""
        ...

    async def list(
        self, query: AccountFilter, *, show_deleted: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[Account]:
        """Up to `limit` accounts in (create_time, id) order, after the position `after`."""
        ...


class AccountSessions(Protocol):
    """The login sessions of an account's users, as far as the account's own use cases need them."""

    async def revoke_account_sessions(self, account_id: str, now: datetime, reason: str) -> list[str]:
        """End every live session of the account's users; the ids of the sessions ended."""
        ...

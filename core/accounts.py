"""What billing may know about an account, as a port: the account module fills it, billing reads it.

Billing needs an account's billing terms (does it exist and is it live, which currency, which time
zone) inside its own transactions, without importing the account module. The composition root hands
each service module a factory that binds the account module's reader to a session, so the read
shares the caller's transaction (and, on PostgreSQL, may lock the account row against a concurrent
delete or currency change).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class AccountTerms:
    account_id: str
    currency_code: str  # ISO 4217; every charge to the account is in it
    billing_time_zone: str  # IANA name; billing periods start at local midnights in it
    live: bool  # False once soft-deleted
    display_name: str = ""  # who the account is, as its invoices show it
    email: str = ""


class AccountDirectory(Protocol):
    async def terms(
        self, account_id: str, *, lock: bool = False, exclusive: bool = False
    ) -> AccountTerms | None:
        """The account's billing terms, or None if no such account. `lock` takes a share lock on
        PostgreSQL, held to the end of the transaction, so the terms cannot change under a write.
        `exclusive` (with `lock`) takes the row lock instead: for a write that must also wait for
        the share lockers (attaching the account to a test clock waits for, and then sees, a
        subscription being created for it)."""
        ...


AccountDirectoryFactory = Callable[[AsyncSession], AccountDirectory]

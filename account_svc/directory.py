"""The account module's side of core.accounts.AccountDirectory: billing terms read on a given session."""

from __future__ import annotations

import functools
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from account_svc.repository import AccountRow
from core import ids
from core.accounts import AccountTerms


@functools.cache
def _terms_statement(lock: bool, exclusive: bool) -> Select[Any]:
    """`terms`' statement (parameter account_id), built once for each variant."""
    accounts = cast(Table, AccountRow.__table__)  # Core columns: no ORM work a read
    statement = select(
        accounts.c.id,
        accounts.c.currency_code,
        accounts.c.billing_time_zone,
        accounts.c.delete_time,
        accounts.c.display_name,
        accounts.c.email,
    ).where(accounts.c.id == bindparam("account_id"))
    if lock:
        # A share lock: concurrent writers under it (usage recorded for the account) do not
        # block each other, while a delete or currency change waits for them (and they for it).
        # An exclusive one also waits for the share lockers, and for the other exclusive ones
        # (two subscriptions made at once for one account). SQLite ignores both (one writer).
        statement = statement.with_for_update(read=not exclusive)
    return statement


class SqlAccountDirectory:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def terms(
        self, account_id: str, *, lock: bool = False, exclusive: bool = False
    ) -> AccountTerms | None:
        if not account_id or len(account_id) > ids.MAX_LENGTH:
            return None
        statement = _terms_statement(lock, exclusive)
        row = (await self._session.execute(statement, {"account_id": account_id})).one_or_none()
        if row is None:
            return None
        return AccountTerms(
            account_id=row.id,
            currency_code=row.currency_code,
            billing_time_zone=row.billing_time_zone,
            live=row.delete_time is None,
            display_name=row.display_name,
            email=row.email,
        )

"""Keyset pages on real databases: every row once, in order, also when timestamps tie."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc.identity.domain import ServiceAccount
from account_svc.sql_unit_of_work import SqlAccountsUnitOfWork
from core import db, ids
from core.audit import AuditEvent
from core.pagination import KeysetPage, PageTokens, Position
from core.principal import SYSTEM

T0 = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)
TOKENS = PageTokens(b"0123456789abcdef")
T = TypeVar("T")


def tied(n: int) -> datetime:
    """Three rows share each timestamp."""
    return T0 + timedelta(microseconds=n // 3)


async def every_page(
    fetch: Callable[[KeysetPage], Awaitable[Sequence[T]]], key: Callable[[T], Position], size: int
) -> list[list[T]]:
    pages: list[list[T]] = []
    token = ""
    while True:
        page = TOKENS.keyset_page(size, token, {"test": True})
        rows, token = page.slice(await fetch(page), key)
        pages.append(rows)
        if not token:
            return pages


async def test_audit_events_page_newest_first(engine: AsyncEngine) -> None:
    sessions = db.session_factory(engine)
    async with SqlAccountsUnitOfWork(sessions) as uow:
        for n in range(8):
            await uow.audit.record(
                SYSTEM, time=tied(n), resource_type="account", resource_id=f"acct_{n}", action="x", changes={}
            )
        await uow.commit()

    async def fetch(page: KeysetPage) -> list[AuditEvent]:
        async with SqlAccountsUnitOfWork(sessions) as uow:
            return await uow.audit.list(before=page.after, limit=page.fetch_limit)

    pages = await every_page(fetch, lambda event: (event.time, event.id), size=3)
    seen = [event for page in pages for event in page]
    assert [len(page) for page in pages] == [3, 3, 2]
    assert [(e.time, e.id) for e in seen] == sorted(((e.time, e.id) for e in seen), reverse=True)
    assert sorted(e.resource_id for e in seen) == [f"acct_{n}" for n in range(8)]


async def test_service_accounts_page_oldest_first(engine: AsyncEngine) -> None:
    sessions = db.session_factory(engine)
    made = [
        ServiceAccount(ids.new_id("svc"), f"svc {n}", ("accounts:read",), tied(n), None) for n in range(7)
    ]
    async with SqlAccountsUnitOfWork(sessions) as uow:
        for account in made:
            await uow.identity.add_service_account(account, "h" * 64)
        await uow.commit()

    async def fetch(page: KeysetPage) -> list[ServiceAccount]:
        async with SqlAccountsUnitOfWork(sessions) as uow:
            return await uow.identity.list_service_accounts(
                show_deleted=False, after=page.after, limit=page.fetch_limit
            )

    def key(account: ServiceAccount) -> Position:
        return account.create_time, account.id

    pages = await every_page(fetch, key, size=3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [a for page in pages for a in page] == sorted(made, key=key)


def test_a_page_that_fits_has_no_next_token() -> None:
    page: KeysetPage = TOKENS.keyset_page(2, "", {})
    rows: list[Any] = [(T0, "a"), (T0, "b")]
    assert page.slice(rows, lambda row: row) == (rows, "")
    shown, token = page.slice([*rows, (T0, "c")], lambda row: row)
    assert shown == rows
    assert TOKENS.decode_key(token, {}) == (T0, "b")

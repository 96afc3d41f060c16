"""How many SQL statements one idempotent write costs, on SQLite and PostgreSQL.

Counted: every statement the driver is handed (SQLAlchemy's `before_cursor_execute`), plus
the transaction's begin and commit as SQLAlchemy reports them. SQLite's `BEGIN IMMEDIATE`
goes through a cursor and PostgreSQL's BEGIN (asyncpg's transaction start) does not, so
BEGIN statements are counted as the begin, not as statements: the same number on both
backends. Not counted: asyncpg's statement preparation (cached per connection).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc import use_cases
from account_svc.domain import AccountFields
from account_svc.unit_of_work import SqlAccountsUnitOfWork
from account_svc.use_cases import AccountDeps
from core import db
from core.clock import FrozenClock
from core.pagination import PageTokens
from core.principal import SYSTEM, Caller

# Before the change that set these bounds: 9 statements for an idempotent UpdateAccount.
UPDATE_BOUND = 9


@dataclass
class Statements:
    sql: list[str] = field(default_factory=list)
    begins: int = 0
    commits: int = 0

    def clear(self) -> None:
        self.sql.clear()
        self.begins = self.commits = 0

    def summary(self) -> list[str]:
        return [" ".join(statement.split()[:4]) for statement in self.sql]


@contextmanager
def counting(engine: AsyncEngine) -> Iterator[Statements]:
    seen = Statements()

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):
            seen.sql.append(statement)

    def on_begin(_conn: Any) -> None:
        seen.begins += 1

    def on_commit(_conn: Any) -> None:
        seen.commits += 1

    target = engine.sync_engine
    hooks = [("before_cursor_execute", on_execute), ("begin", on_begin), ("commit", on_commit)]
    for name, hook in hooks:
        event.listen(target, name, hook)
    try:
        yield seen
    finally:
        for name, hook in hooks:
            event.remove(target, name, hook)


def deps_on(engine: AsyncEngine) -> AccountDeps:
    sessions = db.session_factory(engine)
    return AccountDeps(
        new_uow=lambda: SqlAccountsUnitOfWork(sessions),
        new_reader=lambda: SqlAccountsUnitOfWork(db.session_factory(db.read_only(engine))),
        clock=FrozenClock(datetime(2026, 5, 1, tzinfo=UTC)),
        page_tokens=PageTokens(b"0123456789abcdef"),
    )


def caller(request_id: str) -> Caller:
    return Caller(SYSTEM.principal, "/tally.account.v1.AccountService/Test", request_id)


async def test_idempotent_update_account_statement_count(engine: AsyncEngine) -> None:
    deps = deps_on(engine)
    fields = AccountFields(display_name="Counted", email="counted@example.test", currency_code="USD")
    account = await use_cases.create_account(deps, caller("create-1"), fields)

    with counting(engine) as seen:
        updated = await use_cases.update_account(
            deps, caller("update-1"), account.id, AccountFields(display_name="Recounted"), ["display_name"]
        )

    assert updated.display_name == "Recounted"
    assert (seen.begins, seen.commits) == (1, 1)
    assert len(seen.sql) <= UPDATE_BOUND, seen.summary()

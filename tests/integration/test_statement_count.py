"""How many SQL statements one idempotent write costs, on SQLite and PostgreSQL.

Counted: every statement the driver is handed (SQLAlchemy's `before_cursor_execute`), plus
the transaction's begin and commit as SQLAlchemy reports them. SQLite's `BEGIN IMMEDIATE`
goes through a cursor and PostgreSQL's BEGIN (asyncpg's transaction start) does not, so
BEGIN statements are counted as the begin, not as statements: the same number on both
backends. Not counted: asyncpg's statement preparation (cached per connection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc import use_cases
from account_svc.domain import AccountFields
from account_svc.sql_unit_of_work import SqlAccountsUnitOfWork
from account_svc.use_cases import AccountDeps
from core import db
from core.clock import FrozenClock
from core.pagination import PageTokens
from core.principal import SYSTEM, Caller

# An idempotent UpdateAccount: claim the key (one upsert), read and lock the account, write it,
# record the audit event, store the response. Before the claim became an upsert and saves stopped
# re-reading rows it took 9 statements (and CreateAccount 7), plus BEGIN and COMMIT.
UPDATE_BOUND = 5
CREATE_BOUND = 4  # claim, insert, audit, response
REPLAY_BOUND = 2  # the claim finds the key taken; read the stored response


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

    # Commits are counted for transactions that ran a statement while counted: a background pass of
    # the server (on the same engine) that commits an empty transaction meanwhile is not the work
    # being counted, and on a loaded machine it can fall inside the window.
    def on_execute(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):
            seen.sql.append(statement)
            conn.info["counted_statements"] = True

    def on_begin(conn: Any) -> None:
        seen.begins += 1
        conn.info["counted_statements"] = False

    def on_commit(conn: Any) -> None:
        if conn.info.pop("counted_statements", True):
            seen.commits += 1

    target = engine.sync_engine
    hooks: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", on_execute),
        ("begin", on_begin),
        ("commit", on_commit),
    ]
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


async def test_idempotent_writes_cost_a_bounded_number_of_statements(engine: AsyncEngine) -> None:
    deps = deps_on(engine)
    fields = AccountFields(
        display_name="Counted", email="counted@example.test", currency_code="USD", metadata={"a": "1"}
    )
    with counting(engine) as seen:
        account = await use_cases.create_account(deps, caller("create-1"), fields)
    assert (seen.begins, seen.commits) == (1, 1)
    assert len(seen.sql) <= CREATE_BOUND, seen.summary()

    change = AccountFields(display_name="Recounted", metadata={"b": "2"})
    with counting(engine) as seen:
        updated = await use_cases.update_account(
            deps, caller("update-1"), account.id, change, ["display_name", "metadata"]
        )
    assert (seen.begins, seen.commits) == (1, 1)
    assert len(seen.sql) <= UPDATE_BOUND, seen.summary()
    # What the one UPDATE wrote is what the use case returned.
    assert await use_cases.get_account(deps, SYSTEM, account.id) == updated
    assert (updated.display_name, updated.metadata, updated.revision) == ("Recounted", {"b": "2"}, 2)

    with counting(engine) as seen:
        replayed = await use_cases.update_account(
            deps, caller("update-1"), account.id, change, ["display_name", "metadata"]
        )
    assert replayed == updated
    assert seen.commits == 0
    assert len(seen.sql) <= REPLAY_BOUND, seen.summary()

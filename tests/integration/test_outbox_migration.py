"""Migration 0015 on SQLite and PostgreSQL: outbox rows written before it get their account."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate
from core import db
from core.outbox import account_of
from core.settings import Settings
from tests.support import empty_postgres_database

BEFORE = "0014"  # the revision before the outbox had account_id
# (resource type, resource id, payload) as rows of the revision before, and the account expected.
ROWS: list[tuple[tuple[str, str, dict[str, Any]], str]] = [
    (("invoice", "inv_1", {"account_id": "acct_a", "total_minor": 5}), "acct_a"),
    (("account", "acct_b", {"display_name": "B"}), "acct_b"),
    (("account", "acct_c", {"account_id": "acct_other"}), "acct_c"),  # the account itself wins
    (("plan", "plan_1", {"id": "plan_1"}), ""),
    (("test_clock", "clk_1", {"account_id": ["acct_a"]}), ""),  # not a string: no account
    (("subscription", "sub_1", {"account_id": 7}), ""),
    (("invoice", "inv_2", {"account_id": "x" * 65}), ""),  # longer than the column
    (("credit_note", "cn_1", {"nested": {"account_id": "acct_a"}}), ""),  # only the top level counts
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def bare_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a database with no schema yet."""
    if request.param == "sqlite":
        engine = db.create_engine(Settings(data_dir=tmp_path))
        try:
            yield engine
        finally:
            await engine.dispose()
        return
    async with empty_postgres_database("tally_migration") as url:
        engine = db.create_engine(Settings(database_url=url))
        try:
            yield engine
        finally:
            await engine.dispose()


async def test_upgrade_fills_the_account_of_events_written_before(bare_engine: AsyncEngine) -> None:
    await migrate.upgrade(bare_engine, BEFORE)
    async with bare_engine.begin() as connection:
        for n, ((resource_type, resource_id, payload), _) in enumerate(ROWS):
            await connection.execute(
                text(
                    "INSERT INTO outbox_events (id, type, resource_type, resource_id, payload, create_time)"
                    " VALUES (:id, :type, :rt, :rid, :payload, CURRENT_TIMESTAMP)"
                ),
                {
                    "id": f"oev_{n}",
                    "type": f"{resource_type}.updated",
                    "rt": resource_type,
                    "rid": resource_id,
                    "payload": json.dumps(payload),
                },
            )
    before, after = await migrate.upgrade(bare_engine)
    assert (before, after) == (BEFORE, migrate.head_revision())
    async with bare_engine.connect() as connection:
        stored = (
            (await connection.execute(text("SELECT account_id FROM outbox_events ORDER BY position")))
            .scalars()
            .all()
        )
    assert stored == [expected for _, expected in ROWS]
    # The SQL backfill and the derivation new events get agree on every row.
    assert stored == [account_of(*row) for row, _ in ROWS]
    if bare_engine.dialect.name == "sqlite":
        async with bare_engine.connect() as connection:
            schema = (
                await connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'outbox_events'"))
            ).scalar_one()
        assert "AUTOINCREMENT" in schema  # positions are still never reused (no table copy)


async def test_downgrade_and_upgrade_again(bare_engine: AsyncEngine) -> None:
    await migrate.upgrade(bare_engine)

    def down(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(migrate.MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, BEFORE)

    async with bare_engine.begin() as connection:
        await connection.run_sync(down)
    assert await migrate.current_revision(bare_engine) == BEFORE
    before, after = await migrate.upgrade(bare_engine)
    assert (before, after) == (BEFORE, migrate.head_revision())

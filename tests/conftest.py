"""Shared fixtures: settings per backend (embedded SQLite and real PostgreSQL) and an in-process server.

The suite creates its own database on the PostgreSQL server (tests.support.POSTGRES_ADMIN_URL)
and drops it at the end; between tests it empties every table the service modules declare.
Helpers that are not fixtures are in tests/support.py.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate
from app.modules import table_names
from app.server import App, build
from core import db
from core.settings import Settings
from tally.account.v1 import account_pb2_grpc
from tests.support import (
    JWT_SECRET,
    POSTGRES_ADMIN_URL,
    TEST_SECRET,
    asyncpg_dsn,
    channel_as,
    cheap_passwords,
    emptying_statement,
    mint,
    serving,
    truncate_statement,
    unavailable,
)

# The files that take longest (minutes: the schemathesis run, the README run, the wheels built by
# pip), first: with pytest-xdist (`make test`) each file goes to one worker, in this order, so the
# longest ones start at once instead of ending the run on a single busy worker.
LONGEST_FIRST = (
    "tests/e2e/test_rest.py",
    "tests/e2e/test_readme.py",
    "tests/e2e/test_distributions.py",
    "tests/scenarios/test_collection_worker.py",
    "tests/e2e/test_usage_stream_crash.py",
    "tests/e2e/test_misconfiguration.py",
    "tests/e2e/test_grpcurl.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    root = config.rootpath

    def position(item: pytest.Item) -> int:
        return rank.get(item.path.relative_to(root).as_posix(), len(rank))

    items.sort(key=position)  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read TALLY_* variables; keep the developer's own out of the tests."""
    for name in list(os.environ):
        if name.startswith("TALLY_") and not name.startswith("TALLY_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, migrated database for this test session on the PostgreSQL server."""
    admin_dsn = asyncpg_dsn(POSTGRES_ADMIN_URL)
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}; set TALLY_TEST_POSTGRES_URL"
        )
        raise AssertionError("unreachable") from exc
    name = f"tally_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = db.create_engine(Settings(database_url=url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _truncate(url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        holding = [row["name"] for row in await connection.fetch(emptying_statement(table_names()))]
        statement = truncate_statement(holding)
        if statement is not None:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded database migrated once for the session; each SQLite test starts from a copy of it
    (the server then finds it at the newest revision and only checks that)."""
    directory = tmp_path_factory.mktemp("sqlite-template")
    engine = db.create_engine(
        Settings(data_dir=directory, secret_key=TEST_SECRET, jwt_hs256_secret=JWT_SECRET)
    )
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    database = directory / "tally.db"
    leftovers = [path.name for path in directory.iterdir() if path != database]
    assert not leftovers, f"the template database left {leftovers} beside it"  # nothing unwritten
    return database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None for the embedded SQLite default, else the suite's PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def settings(database_url: str | None, tmp_path: Path, sqlite_template: Path) -> Settings:
    """Settings for a clean database, once for each backend."""
    common = {
        "data_dir": tmp_path,
        "secret_key": TEST_SECRET,
        "grpc_addr": "127.0.0.1:0",
        "http_addr": "127.0.0.1:0",
        "jwt_hs256_secret": JWT_SECRET,
        # Tests run the billing worker's, the webhook delivery's and the payment reconciler's passes
        # themselves (the tests of each turn its job on), so that no background pass races a test
        # that moves the wall clock or counts the statements on the engine.
        "billing_worker": False,
        "collection_worker": False,
        "webhook_delivery": False,
        "payment_reconciler": False,
    }
    if database_url is None:
        shutil.copyfile(sqlite_template, tmp_path / "tally.db")
        return Settings(**common)  # type: ignore[arg-type]
    await _truncate(database_url)
    return Settings(database_url=database_url, migrate_on_start=True, **common)  # type: ignore[arg-type]


@pytest.fixture
def postgres_settings(postgres_url: str, tmp_path: Path) -> Settings:
    """Settings for the PostgreSQL backend only (tests of real concurrency)."""
    return Settings(
        database_url=postgres_url,
        migrate_on_start=True,
        data_dir=tmp_path,
        secret_key=TEST_SECRET,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        jwt_hs256_secret=JWT_SECRET,
        billing_worker=False,
        collection_worker=False,
        webhook_delivery=False,
        payment_reconciler=False,
    )


@pytest.fixture
async def postgres_clean(postgres_url: str) -> None:
    await _truncate(postgres_url)


@pytest.fixture
async def pg_engine(postgres_settings: Settings, postgres_clean: None) -> AsyncIterator[AsyncEngine]:
    """An engine on the suite's PostgreSQL database, emptied first (not migrated again)."""
    engine = db.create_engine(postgres_settings)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(settings)
    await migrate.upgrade(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def pg_app(postgres_settings: Settings, postgres_clean: None) -> AsyncIterator[App]:
    """The real server on the suite's PostgreSQL database, emptied first (tests of real concurrency)."""
    app = await build(postgres_settings, passwords=cheap_passwords())
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    """The real server, built by the composition root, on a free loopback port (its invoices checked
    by `serving` at the end)."""
    async with serving(settings) as application:
        yield application


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    """A channel whose calls carry an admin token."""
    async with channel_as(app, mint(app)) as chan:
        yield chan


@pytest.fixture
def accounts(channel: grpc.aio.Channel) -> account_pb2_grpc.AccountServiceStub:
    return account_pb2_grpc.AccountServiceStub(channel)

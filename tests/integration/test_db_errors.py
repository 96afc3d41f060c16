"""Database errors are classified once (core.db.classify), tested with real driver exceptions:
PostgreSQL raises each SQLSTATE for real (RAISE ... USING ERRCODE, a NUL byte, a terminated
backend), and SQLite reports a real lock."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from core import db
from core.errors import Aborted, InvalidArgument, TallyError, Unavailable

pytestmark = pytest.mark.postgres


async def _raised_through_uow(engine: AsyncEngine, sql: str, **params: object) -> BaseException:
    """What leaves a unit of work whose statement fails with the server's own error."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 (the classification is the test)
        async with db.UnitOfWork(db.session_factory(engine)) as uow:
            await uow.session.execute(text(sql), params)
    return caught.value


def _raise(sqlstate: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '{sqlstate}'; END $$"


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("57P03", Unavailable),  # cannot connect now: the server is starting up or shutting down
        ("57P01", Unavailable),  # admin shutdown
        ("57P02", Unavailable),  # crash shutdown
        ("08006", Unavailable),  # connection failure
        ("08001", Unavailable),
        ("53300", Unavailable),  # too many connections
        ("53100", Unavailable),  # disk full
        ("40001", Aborted),  # serialization failure
        ("40P01", Aborted),  # deadlock detected
        ("22001", InvalidArgument),  # string too long
        ("22021", InvalidArgument),  # character not in repertoire
        ("22P05", InvalidArgument),  # untranslatable character
    ],
)
async def test_each_sqlstate_class_becomes_its_error(
    pg_engine: AsyncEngine, sqlstate: str, kind: type
) -> None:
    error = await _raised_through_uow(pg_engine, _raise(sqlstate))
    assert type(error) is kind, repr(error)
    assert error.__cause__ is not None  # the driver's exception stays attached for the log


async def test_a_state_nobody_classified_stays_an_internal_error(pg_engine: AsyncEngine) -> None:
    error = await _raised_through_uow(pg_engine, _raise("42P01"))
    assert not isinstance(error, TallyError)


async def test_a_nul_byte_that_reaches_postgresql_is_invalid_argument_and_logged_as_a_bug(
    pg_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="tally.db"):
        error = await _raised_through_uow(pg_engine, "SELECT CAST(:v AS text)", v="zebra\0quagga")
    assert isinstance(error, InvalidArgument)
    assert error.reason == "INVALID_DATA"
    assert "zebra" not in error.message and not error.violations  # generic: no value, no field
    [record] = [r for r in caplog.records if r.name == "tally.db"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "22021" in record.getMessage()


async def test_a_value_too_long_for_its_column_is_invalid_argument(pg_engine: AsyncEngine) -> None:
    with pytest.raises(InvalidArgument):
        async with db.UnitOfWork(db.session_factory(pg_engine)) as uow:
            await uow.session.execute(text("CREATE TEMP TABLE narrow (v varchar(3))"))
            await uow.session.execute(text("INSERT INTO narrow VALUES (:v)"), {"v": "abcd"})


async def test_a_backend_terminated_under_the_call_is_unavailable(pg_engine: AsyncEngine) -> None:
    error = await _raised_through_uow(pg_engine, "SELECT pg_terminate_backend(pg_backend_pid())")
    assert isinstance(error, Unavailable), repr(error)
    assert error.reason == "DATABASE_UNAVAILABLE"


def test_a_locked_sqlite_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("BEGIN IMMEDIATE")
    finally:
        holder.close()
        waiter.close()
    assert "locked" in str(caught.value)
    assert isinstance(db.classify(caught.value), Unavailable)
    wrapped = OperationalError("BEGIN IMMEDIATE", {}, caught.value)
    assert isinstance(db.classify(wrapped), Unavailable)


def test_a_refused_connection_is_unavailable() -> None:
    assert isinstance(db.classify(ConnectionRefusedError(111, "Connection refused")), Unavailable)


def test_domain_errors_and_success_are_left_alone() -> None:
    assert db.classify(None) is None
    assert db.classify(InvalidArgument.field("x", "bad")) is None
    assert db.classify(ValueError("a bug")) is None

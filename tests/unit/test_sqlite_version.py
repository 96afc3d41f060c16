"""The embedded default refuses a SQLite too old for the request-id upsert, naming what to do."""

from __future__ import annotations

import sqlite3

import pytest

from app.server import MIN_SQLITE, check_sqlite_version
from core.settings import SettingsError


def test_an_old_sqlite_is_refused_with_a_way_out() -> None:
    with pytest.raises(
        SettingsError, match=r"SQLite 3\.35\.0 or newer, this Python has 3\.34\.1.*TALLY_DATABASE_URL"
    ):
        check_sqlite_version((3, 34, 1))


def test_this_machine_and_the_minimum_pass() -> None:
    check_sqlite_version(MIN_SQLITE)
    check_sqlite_version(sqlite3.sqlite_version_info)

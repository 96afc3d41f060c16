from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import SettingsError, load_settings


def test_defaults_are_embedded_sqlite() -> None:
    settings = load_settings()
    assert settings.grpc_addr == "127.0.0.1:50051"
    assert settings.is_sqlite
    assert settings.should_migrate_on_start
    assert settings.effective_database_url.endswith(str(Path(".tally/tally.db").resolve()))


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_GRPC_ADDR", "0.0.0.0:6000")
    monkeypatch.setenv("TALLY_DATABASE_URL", "postgresql://app:s3cret@db:5432/tally")
    settings = load_settings(grpc_addr="[::1]:7000")

    assert settings.grpc_addr == "[::1]:7000"
    assert settings.database_url == "postgresql+asyncpg://app:s3cret@db:5432/tally"
    assert not settings.should_migrate_on_start
    assert "s3cret" not in settings.describe_database()


def test_every_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_DB_POOL_SIZE", "0")
    with pytest.raises(SettingsError) as caught:
        load_settings(grpc_addr="localhost:99999", database_url="mysql://x/y", log_level="LOUD")

    message = str(caught.value)
    for name in ("TALLY_GRPC_ADDR", "TALLY_DATABASE_URL", "TALLY_LOG_LEVEL", "TALLY_DB_POOL_SIZE"):
        assert name in message


def test_unknown_tally_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_GRPC_ADRR", "typo:1")
    with pytest.raises(SettingsError, match="TALLY_GRPC_ADRR"):
        load_settings()


@pytest.mark.parametrize("value", ["-1", "86401", "hourly"])
def test_purge_interval_out_of_range_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TALLY_IDEMPOTENCY_PURGE_INTERVAL_SECONDS", value)
    with pytest.raises(SettingsError, match="TALLY_IDEMPOTENCY_PURGE_INTERVAL_SECONDS"):
        load_settings()

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from app import cli
from app.server import serve_worker_metrics
from core.metrics import Metrics
from core.settings import ListenError, Settings, SettingsError, check_can_listen, flag, load_settings


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


def test_the_reconciler_waits_longer_than_the_inline_payment_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 calls of up to 20 s, with waits of 1, 2, 4 and 8 s between them: 115 s inline at most.
    monkeypatch.setenv("TALLY_PAYMENT_RETRY_ATTEMPTS", "5")
    monkeypatch.setenv("TALLY_PAYMENT_GATEWAY_TIMEOUT_SECONDS", "20")
    monkeypatch.setenv("TALLY_PAYMENT_RETRY_DELAY_SECONDS", "1")
    monkeypatch.setenv("TALLY_PAYMENT_RECONCILE_AFTER_SECONDS", "115")
    with pytest.raises(SettingsError, match=r"TALLY_PAYMENT_RECONCILE_AFTER_SECONDS.*115 s") as caught:
        load_settings()
    assert "TALLY_PAYMENT_RETRY_ATTEMPTS" in str(caught.value)
    monkeypatch.setenv("TALLY_PAYMENT_RECONCILE_AFTER_SECONDS", "116")
    assert load_settings().payment_reconcile_after_seconds == 116
    fields = Settings.model_fields  # the defaults: 3 calls of 10 s, waits of 0.2 and 0.4 s, 30.6 s
    assert fields["payment_retry_attempts"].default == 3
    assert fields["payment_gateway_timeout_seconds"].default == 10
    assert fields["payment_retry_delay_seconds"].default == 0.2
    assert fields["payment_reconcile_after_seconds"].default > 30.6


# --- values given as text: any case for named values, JSON for lists and maps ---------------------


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARNING")])
def test_log_level_in_any_case(monkeypatch: pytest.MonkeyPatch, given: str, level: str) -> None:
    assert load_settings(log_level=given).log_level == level
    monkeypatch.setenv("TALLY_LOG_LEVEL", given)
    assert load_settings().log_level == level


def test_a_log_level_that_is_none_names_the_variable_and_the_flag() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(log_level="loud")
    assert str(caught.value) == (
        "TALLY_LOG_LEVEL (--log-level): Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"
    )


def test_json_settings_from_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_RATE_LIMITS", '{"auth": {"rate": 2, "burst": 5}}')
    monkeypatch.setenv("TALLY_CORS_ORIGINS", '["https://portal.example.com"]')
    settings = load_settings()
    assert settings.rate_limits["auth"].burst == 5
    assert settings.rate_limits["default"].burst == 100  # groups not given keep their defaults
    assert settings.cors_origins == ["https://portal.example.com"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "nope",
            "TALLY_RATE_LIMITS: not valid JSON (Expecting value at character 0); expected JSON such as ",
        ),
        (
            '{"default": {"rate": 0, "burst": 1}}',
            "TALLY_RATE_LIMITS: default.rate: Input should be greater than 0",
        ),
        ('{"auth": {"rate": 1, "burst": 1, "cost": 2}}', "TALLY_RATE_LIMITS: auth.cost: Extra inputs"),
    ],
)
def test_a_bad_json_setting_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("TALLY_RATE_LIMITS", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_port_zero_needs_a_host() -> None:
    assert load_settings(grpc_addr="127.0.0.1:0").grpc_addr == "127.0.0.1:0"
    with pytest.raises(SettingsError, match=r"TALLY_GRPC_ADDR .*such as 127\.0\.0\.1:50051 .*got ':0'"):
        load_settings(grpc_addr=":0")


def test_the_worker_metrics_address_may_be_empty_and_is_otherwise_checked() -> None:
    assert load_settings().worker_metrics_addr == "127.0.0.1:9464"  # not serve's 8080
    assert load_settings(worker_metrics_addr="").worker_metrics_addr == ""  # no metrics server
    assert load_settings(worker_metrics_addr="[::1]:0").worker_metrics_addr == "[::1]:0"
    with pytest.raises(
        SettingsError, match=r"^TALLY_WORKER_METRICS_ADDR \(--worker-metrics-addr\): .*HOST:PORT"
    ):
        load_settings(worker_metrics_addr="9464")


# --- listen addresses, checked before anything is bound for real -----------------------------------


def test_a_busy_address_is_refused_with_the_reason() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        address = f"127.0.0.1:{blocker.getsockname()[1]}"
        with pytest.raises(ListenError) as caught:
            check_can_listen("TALLY_HTTP_ADDR", address)
    assert str(caught.value).startswith(
        f"cannot listen on {address} (TALLY_HTTP_ADDR): address already in use"
    )
    check_can_listen("TALLY_HTTP_ADDR", address)  # free again once the blocker is gone


async def test_a_worker_metrics_port_taken_after_the_check_names_the_setting() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        address = f"127.0.0.1:{blocker.getsockname()[1]}"
        with pytest.raises(ListenError) as caught:
            await serve_worker_metrics(Settings(worker_metrics_addr=address), Metrics())
    assert caught.value.setting == "TALLY_WORKER_METRICS_ADDR"
    assert str(caught.value).startswith(
        f"cannot listen on {address} (TALLY_WORKER_METRICS_ADDR): address already in use"
    )
    assert await serve_worker_metrics(Settings(worker_metrics_addr=""), Metrics()) is None


def test_an_address_of_another_host_is_refused() -> None:
    with pytest.raises(ListenError, match="not an address of this host"):
        check_can_listen("TALLY_GRPC_ADDR", "192.0.2.1:0")  # TEST-NET-1: never local


# --- the flags derived from the fields ------------------------------------------------------------


def serve_flags() -> dict[str, argparse.Action]:
    root = cli.parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return {option: action for action in serve._actions for option in action.option_strings}


def test_serve_has_a_flag_for_every_setting_but_the_secrets() -> None:
    flags = serve_flags()
    secrets = {name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)}
    assert secrets == {
        "secret_key",
        "jwt_hs256_secret",
        "stripe_api_key",
        "stripe_webhook_secret",
        "gateway_secret",
    }
    for name, field in Settings.model_fields.items():
        if name in secrets:
            assert flag(name) not in flags, f"{name} is a secret: environment only"
            continue
        action = flags.get(flag(name))
        assert action is not None, f"setting {name} has no {flag(name)} flag"
        assert action.help is not None and field.description, name
        assert f"TALLY_{name.upper()}; default: " in action.help, action.help


def test_the_existing_flag_names_stay() -> None:
    assert {
        "--grpc-addr",
        "--http-addr",
        "--data-dir",
        "--database-url",
        "--log-level",
        "--log-format",
    } <= set(serve_flags())


def test_flags_become_settings() -> None:
    command, overrides, _ = cli.parse_command_line(
        [
            "serve",
            "--log-level",
            "debug",
            "--no-gateway-strict",
            "--rate-limits",
            '{"x": {"rate": 1, "burst": 2}}',
        ]
    )
    settings = load_settings(**overrides)
    assert command == "serve"
    assert (settings.log_level, settings.gateway_strict) == ("DEBUG", False)
    assert settings.rate_limits["x"].burst == 2
    assert load_settings(**cli.parse_command_line(["serve"])[1]) == Settings()


def test_help_shows_defaults_and_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(TALLY_DB_POOL_SIZE; default: 10)" in shown
    secrets = (
        "TALLY_SECRET_KEY, TALLY_JWT_HS256_SECRET, TALLY_STRIPE_API_KEY, TALLY_STRIPE_WEBHOOK_SECRET, "
        "TALLY_GATEWAY_SECRET"
    )
    assert f"Secrets come from the environment only: {secrets}." in shown

"""End to end: each misconfiguration an operator meets ends `tally` with exit 2 and one line that
names the setting (and what to do), never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from importlib import metadata
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.e2e.harness import parse_log_line, run_tally, server_env, tally_command
from tests.support import POSTGRES_ADMIN_URL, unavailable

pytestmark = pytest.mark.e2e


def the_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a failed command, as text (a JSON log line gives its message)."""
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected exactly one line on stderr:\n{result.stderr}"
    entry = parse_log_line(lines[0])
    return str(entry["msg"]) if entry else lines[0]


def assert_refused(result: subprocess.CompletedProcess[str], setting: str, *hints: str) -> str:
    assert result.returncode == 2, result.stderr
    line = the_line(result)
    assert setting in line, line
    for hint in hints:
        assert hint in line, line
    return line


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("TALLY_RATE_LIMITS", "not json", "not valid JSON"),
        ("TALLY_RATE_LIMITS", '{"default": {"rate": 50}}', "default.burst"),
        ("TALLY_CORS_ORIGINS", "https://portal.example.com", "not valid JSON"),
        ("TALLY_RATE_LIMIT_FAIL_CLOSED", "[auth]", "not valid JSON"),
        ("TALLY_LOG_LEVEL", "loud", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("TALLY_DB_POOL_SIZE", "many", "integer"),
        ("TALLY_GATEWAY_STRICT", "maybe", "boolean"),
        ("TALLY_GRPC_ADDR", ":0", "127.0.0.1:50051"),
        ("TALLY_HTTP_ADDR", "localhost", "HOST:PORT"),
        ("TALLY_REDIS_URL", "localhost:6379", "redis://"),
        ("TALLY_JWT_HS256_SECRET", "short", "32 bytes"),
        ("TALLY_LOG_LEVLE", "DEBUG", "did you mean TALLY_LOG_LEVEL?"),
    ],
)
def test_a_bad_value_is_one_line_naming_it(tmp_path: Path, variable: str, value: str, hint: str) -> None:
    result = run_tally("serve", server_env(tmp_path, **{variable: value}), tmp_path, timeout=30)
    line = assert_refused(result, variable, hint)
    assert line.startswith("tally: ")
    assert not list(tmp_path.iterdir()), "nothing may be written before the settings are checked"


def test_a_bad_flag_value_names_the_variable_and_the_flag(tmp_path: Path) -> None:
    result = run_tally("serve", server_env(tmp_path), tmp_path, args=("--rate-limits", "{"), timeout=30)
    assert_refused(result, "TALLY_RATE_LIMITS (--rate-limits)", "not valid JSON")


@pytest.mark.parametrize("variable", ["TALLY_GRPC_ADDR", "TALLY_HTTP_ADDR"])
def test_a_busy_port_is_one_line_before_anything_is_written(tmp_path: Path, variable: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        address = f"127.0.0.1:{blocker.getsockname()[1]}"
        result = run_tally("serve", server_env(tmp_path, **{variable: address}), tmp_path, timeout=30)
    assert_refused(result, f"cannot listen on {address} ({variable})", "address already in use")
    assert not (tmp_path / "tally.db").exists(), "the database was migrated before the bind failed"


def test_an_address_of_another_host_is_refused(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of this machine.
    result = run_tally("serve", server_env(tmp_path, TALLY_GRPC_ADDR="192.0.2.1:50051"), tmp_path, timeout=30)
    assert_refused(result, "(TALLY_GRPC_ADDR)", "not an address of this host")


@pytest.fixture
def postgres_server() -> str:
    """The suite's PostgreSQL server URL; these tests need only that it answers."""
    url = make_url(POSTGRES_ADMIN_URL)
    with socket.socket() as probe:
        probe.settimeout(5)
        if probe.connect_ex((url.host or "127.0.0.1", url.port or 5432)) != 0:
            unavailable(f"PostgreSQL is not reachable at {url.host}:{url.port}; set TALLY_TEST_POSTGRES_URL")
    return POSTGRES_ADMIN_URL


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_database_that_does_not_exist(tmp_path: Path, postgres_server: str, command: str) -> None:
    missing = f"tally_missing_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_server).set(database=missing).render_as_string(hide_password=False)
    result = run_tally(command, server_env(tmp_path, TALLY_DATABASE_URL=url), tmp_path, timeout=60)
    assert_refused(
        result, "TALLY_DATABASE_URL", f'database "{missing}" does not exist', "create the database"
    )


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_role_that_does_not_exist(tmp_path: Path, postgres_server: str, command: str) -> None:
    role = f"nosuchrole{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_server).set(username=role, password="s3cret-pw")
    result = run_tally(
        command,
        server_env(tmp_path, TALLY_DATABASE_URL=url.render_as_string(hide_password=False)),
        tmp_path,
        timeout=60,
    )
    line = assert_refused(result, "TALLY_DATABASE_URL", role)
    assert "s3cret-pw" not in result.stderr, "the password was shown"
    assert "***" in line


def test_a_database_that_refuses_connections_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"postgresql+asyncpg://tally:pw@127.0.0.1:{closed.getsockname()[1]}/tally"
        result = run_tally("migrate", server_env(tmp_path, TALLY_DATABASE_URL=url), tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr  # not a bad setting for sure: the server may be down
    line = the_line(result)
    assert "TALLY_DATABASE_URL" in line and "cannot reach" in line, line
    assert "pw@" not in line


def test_a_data_dir_that_cannot_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    env = server_env(tmp_path / "file" / "data")
    result = run_tally("migrate", env, tmp_path, timeout=30)
    assert_refused(result, "TALLY_DATA_DIR", "Not a directory")


def test_log_level_in_any_case(tmp_path: Path) -> None:
    result = run_tally("migrate", server_env(tmp_path, TALLY_LOG_LEVEL="warning"), tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "at WARNING, a successful migration logs nothing"
    result = run_tally("migrate", server_env(tmp_path), tmp_path, args=("--log-level", "Info"), timeout=30)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["level"] for line in result.stderr.splitlines()] == ["info"]


def test_version_is_the_installed_package() -> None:
    result = subprocess.run(
        [*tally_command(), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tally {metadata.version('tally')}"

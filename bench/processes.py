"""Start and stop the servers under test: the echo server, `tally serve` and bench/bare_tally.py.

Each server's stderr (and stdout, unless it is thrown away) goes to a log file in
the bench's temporary directory; the bench polls that file for the line that
names the bound port. Also mints the bearer tokens the servers accept.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pgdb import BenchDatabase

BENCH_DIR = Path(__file__).resolve().parent
TALLY_BIN = Path(sys.executable).with_name("tally")
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
# Signs page tokens, which the bench never reads back; fresh for every bench run.
_SIGNING_KEY = secrets.token_hex(32)
# Signs and verifies the access tokens (HS256, 64 bytes): the same value for every tally process
# of one bench run, so a token minted by `tally token` verifies in every server; fresh each run.
_JWT_SECRET = secrets.token_hex(32)
# High enough that the limiter never refuses a bench call; every call is still checked and charged.
RATE_LIMITS = json.dumps({name: {"rate": 1_000_000, "burst": 1_000_000} for name in ("default", "auth")})


class BenchError(Exception):
    """Something the bench needs failed; the message says what."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""
    database: str = ""  # the database it serves, as it described it at start-up (tally only)
    http_address: str = ""  # tally serve's HTTP side (/metrics)
    worker_pids: list[int] = field(default_factory=list)  # `tally serve --workers N`: the workers

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_SECONDS."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _json_lines(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _wait_for_entry(server: Server, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for entry in _json_lines(server.log_path):
            if matches(entry):
                return entry
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        time.sleep(0.05)
    server.stop()
    raise BenchError(f"{server.name} did not start in {STARTUP_TIMEOUT_SECONDS:.0f} s:\n{server.log_tail()}")


def _spawn(
    name: str,
    command: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    *,
    discard_stdout: bool = False,
) -> Server:
    """Start a server with stderr (and stdout, unless `discard_stdout`) going to `log_path`."""
    with log_path.open("wb") as log:
        stdout: int | IO[bytes] = subprocess.DEVNULL if discard_stdout else log
        process = subprocess.Popen(command, stdout=stdout, stderr=log, env=env)
    return Server(name=name, process=process, log_path=log_path)


def start_echo(loop: str, workdir: Path) -> Server:
    command = [sys.executable, str(BENCH_DIR / "echo_server.py"), "--loop", loop]
    server = _spawn(f"echo server ({loop})", command, workdir / f"echo-{loop}.log")
    entry = _wait_for_entry(server, lambda entry: "port" in entry)
    server.address = f"127.0.0.1:{entry['port']}"
    return server


def echo_served_total(server: Server) -> int | None:
    """The count the echo server printed when it stopped (None if it did not)."""
    totals = [entry["served"] for entry in _json_lines(server.log_path) if "served" in entry]
    return int(totals[-1]) if totals else None


@dataclass
class Tracing:
    """The trace sampling every tally process of one run uses (run.py's --trace-ratio)."""

    ratio: float = 0.1


TRACING = Tracing()


def sampler_env(ratio: float) -> dict[str, str]:
    """OpenTelemetry's production sampler at `ratio`: a root call is sampled with that chance and a
    call whose parent was sampled always is; 1 is every call (the SDK's default, parentbased_always_on)."""
    if ratio >= 1:
        return {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    return {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": f"{ratio:g}"}


def tally_env(
    database: BenchDatabase | None,
    data_dir: Path,
    loop: str = "auto",
    *,
    redis_url: str | None = None,
    traces_exporter: str = "none",
) -> dict[str, str]:
    """The environment of every tally process: the caller's, minus any TALLY_* and OTEL_* variables.

    Every process of one run shares the JWT secret (tokens verify everywhere) and binds its gRPC
    and HTTP sides to ports the kernel picks. Without `redis_url` the rate limiter uses
    in-process buckets. `traces_exporter` goes to OTEL_TRACES_EXPORTER (`none`: spans are
    created but not exported; `console`: batched and written as JSON to stdout).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TALLY_", "OTEL_"))}
    env.update(
        TALLY_GRPC_ADDR="127.0.0.1:0",
        TALLY_HTTP_ADDR="127.0.0.1:0",
        TALLY_LOG_FORMAT="json",
        TALLY_LOG_LEVEL="INFO",
        TALLY_SECRET_KEY=_SIGNING_KEY,
        TALLY_JWT_HS256_SECRET=_JWT_SECRET,
        TALLY_RATE_LIMITS=RATE_LIMITS,
        TALLY_DATA_DIR=str(data_dir),
        TALLY_EVENT_LOOP=loop,
        TALLY_SHUTDOWN_GRACE_SECONDS="2",
        TALLY_SHUTDOWN_DRAIN_SECONDS="0",
        OTEL_TRACES_EXPORTER=traces_exporter,
        **sampler_env(TRACING.ratio),
    )
    if database is not None:
        env["TALLY_DATABASE_URL"] = database.sqlalchemy_url
    if redis_url:
        env["TALLY_REDIS_URL"] = redis_url
    return env


def mint_token(env: dict[str, str], subject: str) -> str:
    """`tally token --role admin --subject SUBJECT` with the servers' settings: a bearer token."""
    result = subprocess.run(
        [str(TALLY_BIN), "token", "--role", "admin", "--subject", subject],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.split()
    if result.returncode != 0 or not lines:
        raise BenchError(f"tally token failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return lines[-1]


def migrate_tally(database: BenchDatabase, data_dir: Path) -> None:
    result = subprocess.run(
        [str(TALLY_BIN), "migrate"],
        env=tally_env(database, data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"tally migrate failed ({result.returncode}):\n{result.stderr[-2000:]}")


def start_tally(
    database: BenchDatabase,
    data_dir: Path,
    loop: str,
    *,
    label: str = "",
    redis_url: str | None = None,
    traces_exporter: str = "none",
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """`tally serve`; with traces_exporter="console" its stdout (the spans) goes to /dev/null.
    `workers` > 1: `tally serve --workers N`, which announces itself once every worker serves."""
    label = label or loop
    env = tally_env(database, data_dir, loop, redis_url=redis_url, traces_exporter=traces_exporter)
    env.update(extra_env or {})
    server = _spawn(
        f"tally serve ({label})",
        [str(TALLY_BIN), "serve", *(["--workers", str(workers)] if workers > 1 else [])],
        data_dir / f"tally-{label}.log",
        env=env,
        discard_stdout=traces_exporter == "console",
    )
    entry = _wait_for_entry(
        server, lambda entry: str(entry.get("msg", "")).startswith("tally serving gRPC on")
    )
    if "grpc_addr" not in entry:
        server.stop()
        raise BenchError(f"the 'tally serving gRPC on' log line has no grpc_addr field: {entry}")
    server.address = str(entry["grpc_addr"])
    server.http_address = str(entry.get("http_addr", ""))
    server.database = _database_in(str(entry["msg"]))
    server.worker_pids = [int(pid) for pid in entry.get("workers", [server.process.pid])]
    return server


def _database_in(message: str) -> str:
    """'PostgreSQL at ...' from the '... (database: PostgreSQL at ...; rate limits: ...)' log line."""
    _, _, rest = message.partition("(database: ")
    return rest.partition("; rate limits")[0]


def start_bare_tally(database: BenchDatabase, data_dir: Path, loop: str = "uvloop") -> Server:
    """bench/bare_tally.py: AccountService alone on a grpc.aio server without interceptors."""
    server = _spawn(
        f"bare tally ({loop})",
        [sys.executable, str(BENCH_DIR / "bare_tally.py")],
        data_dir / f"bare-tally-{loop}.log",
        env=tally_env(database, data_dir, loop),
    )
    entry = _wait_for_entry(server, lambda entry: "port" in entry and "database" in entry)
    server.address = f"127.0.0.1:{entry['port']}"
    server.database = str(entry["database"])
    return server


def log_lines_containing(server: Server, text: str) -> int:
    """How many lines of the server's log contain `text`."""
    if not server.log_path.exists():
        return 0
    with server.log_path.open(errors="replace") as log:
        return sum(text in line for line in log)

"""Start and stop the servers under test: the echo server and `tally serve`.

Each server's stdout and stderr go to a log file in the bench's temporary
directory; the bench polls that file for the line that names the bound port.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgdb import BenchDatabase

BENCH_DIR = Path(__file__).resolve().parent
TALLY_BIN = Path(sys.executable).with_name("tally")
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
# Signs page tokens, which the bench never reads back; fresh for every bench run.
_SIGNING_KEY = secrets.token_hex(32)


class BenchError(Exception):
    """Something the bench needs failed; the message says what."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

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


def _spawn(name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> Server:
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
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


def tally_env(database: BenchDatabase, data_dir: Path, loop: str = "auto") -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TALLY_")}
    env.update(
        TALLY_DATABASE_URL=database.sqlalchemy_url,
        TALLY_GRPC_ADDR="127.0.0.1:0",
        TALLY_LOG_FORMAT="json",
        TALLY_LOG_LEVEL="INFO",
        TALLY_SECRET_KEY=_SIGNING_KEY,
        TALLY_DATA_DIR=str(data_dir),
        TALLY_EVENT_LOOP=loop,
        TALLY_SHUTDOWN_GRACE_SECONDS="2",
    )
    return env


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


def start_tally(database: BenchDatabase, data_dir: Path, loop: str) -> Server:
    server = _spawn(
        f"tally serve ({loop})",
        [str(TALLY_BIN), "serve"],
        data_dir / f"tally-{loop}.log",
        env=tally_env(database, data_dir, loop),
    )
    entry = _wait_for_entry(
        server, lambda entry: str(entry.get("msg", "")).startswith("tally serving gRPC on")
    )
    if "grpc_addr" not in entry:
        server.stop()
        raise BenchError(f"the 'tally serving gRPC on' log line has no grpc_addr field: {entry}")
    server.address = str(entry["grpc_addr"])
    return server

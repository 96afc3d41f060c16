"""Runs `tally sandbox-gateway` as a real subprocess on loopback, for the gateway tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_DELAY = 3.0  # what tok_timeout makes the client wait: far above the client's timeout
CLIENT_TIMEOUT = 0.5
PENDING_DELAY = 0.3


@contextmanager
def sandbox_process(*extra: str) -> Iterator[str]:
    """The base URL of a running sandbox gateway; stopped with SIGTERM at the end."""
    command = [sys.executable, "-m", "app.cli", "sandbox-gateway", "--listen", "127.0.0.1:0", *extra]
    process = subprocess.Popen(
        command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded by the test timeout; it prints once listening
        if not line.startswith("sandbox gateway listening on "):
            raise RuntimeError(
                f"sandbox gateway did not start: {line!r} {process.stderr.read() if process.stderr else ''}"
            )
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=10)

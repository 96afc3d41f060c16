"""Drive a gRPC unary method (or a plain HTTP/1.1 GET) with h2load and read back its figures.

h2load speaks plain HTTP/2: it POSTs the same gRPC-framed body file with
`content-type: application/grpc`, `te: trailers` and any extra headers (the
bearer token), and cannot see the
grpc-status trailer. It does count the response DATA bytes, which the caller can
turn into a count of full replies. Requests/s comes from h2load's summary; p50
and p99 come from its per-request `--log-file`.

With `http1=True` (the REST part) it sends plain HTTP/1.1 GETs (`--h1`, no body, no
gRPC headers) and the caller counts successes from h2load's `status codes: N 2xx`
line, which HTTP/1.1 responses fill in.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

H2LOAD_MISSING = "h2load not found; install it with: apt-get install -y nghttp2-client"

_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed")
_DATA = re.compile(r"traffic: .*\((\d+)\) data")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def find_h2load() -> str | None:
    return shutil.which("h2load") or (
        str(Path("/usr/bin/h2load")) if Path("/usr/bin/h2load").exists() else None
    )


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: flag byte 0 (uncompressed), 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class H2loadResult:
    requests: int
    done: int
    http_ok: int
    data_bytes: int
    seconds: float
    rps: float
    latencies_ms: list[float]
    status_2xx: int = 0
    status_other: int = 0  # 3xx, 4xx and 5xx answers


class H2loadError(Exception):
    pass


def _match(pattern: re.Pattern[str], output: str) -> re.Match[str]:
    found = pattern.search(output)
    if found is None:
        raise H2loadError(f"unexpected h2load output (no {pattern.pattern!r}):\n{output[-1500:]}")
    return found


def _log_latencies_ms(log_file: Path) -> list[float]:
    """Latencies of answered streams from `--log-file`: start µs, HTTP status (-1: failed), duration µs."""
    latencies = []
    for line in log_file.read_text().splitlines():
        columns = line.split("\t")
        if len(columns) >= 3 and columns[1] != "-1":
            latencies.append(int(columns[2]) / 1000)
    return latencies


def run(
    h2load: str,
    url: str,
    body_file: Path,
    *,
    requests: int,
    concurrency: int,
    connections: int,
    timeout: float,
    headers: Sequence[str] = (),
    http1: bool = False,
) -> H2loadResult:
    """One bounded h2load run: `requests` calls, `concurrency` streams over `connections` connections.

    `headers` are extra request headers ("name: value"), e.g. "authorization: Bearer <token>".
    With `http1`, plain HTTP/1.1 GETs (`--h1`, `concurrency` requests in flight as
    `concurrency` connections, since HTTP/1.1 has one request in flight per connection);
    `body_file` then only names the log file and is not sent.
    """
    log_file = body_file.with_suffix(".h2load.log")
    log_file.unlink(missing_ok=True)
    if http1:
        # h2load --h1 pipelines when --max-concurrent-streams > 1; one request per connection in
        # flight, like a browser or a typical HTTP/1.1 client pool.
        transport = ["--h1", f"--clients={max(1, concurrency)}", "--max-concurrent-streams=1"]
    else:
        clients = max(1, min(connections, concurrency))
        streams = math.ceil(concurrency / clients)
        transport = [
            f"--clients={clients}",
            f"--max-concurrent-streams={streams}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"--data={body_file}",
        ]
    command = [
        h2load,
        f"--requests={requests}",
        *transport,
        "--threads=1",
        *(f"--header={header}" for header in headers),
        f"--log-file={log_file}",
        url,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise H2loadError(f"h2load did not finish {requests} requests within {timeout:.0f} s") from None
    if result.returncode != 0:
        raise H2loadError(f"h2load failed ({result.returncode}):\n{result.stderr[-1500:]}")
    output = result.stdout
    finished = _match(_FINISHED, output)
    counts = _match(_REQUESTS, output)
    status = _match(_STATUS, output)
    return H2loadResult(
        requests=requests,
        done=int(counts.group(3)),
        http_ok=int(counts.group(4)),
        data_bytes=int(_match(_DATA, output).group(1)),
        seconds=float(finished.group(1)) * _UNIT_SECONDS[finished.group(2)],
        rps=float(finished.group(3)),
        latencies_ms=_log_latencies_ms(log_file),
        status_2xx=int(status.group(1)),
        status_other=sum(int(status.group(n)) for n in (2, 3, 4)),
    )

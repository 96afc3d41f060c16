"""Every core: `tally serve --workers 2` against 1, Tally's REST face against the hand-written
FastAPI baseline, and the seed target as an open-loop test.

Three parts, on the bench database and account, uvloop everywhere:

* workers: `tally serve` (settings of the main rounds: in-process rate limits, spans not
  exported) with 1 and with 2 workers, h2load on gRPC Health/Check (the echo-like path: the whole
  interceptor chain, no database), 64 streams over 16 connections (the kernel spreads
  connections, not streams, over the workers). Successes: complete replies in the DATA bytes.
* baseline: GET /v1/accounts/<id> with the bearer token over HTTP/1.1 (h2load --h1, 64
  connections), on Tally's REST face with the whole chain on (rate limits in Redis, spans
  exported to /dev/null, access log, metrics; the cache as the settings default it) and on
  bench/baseline_fastapi.py under uvicorn; with 1 worker each, then `tally serve --workers 2`
  against `uvicorn --workers 2`.
* open loop: GetAccount over gRPC at a fixed offered rate (h2load --rps per connection, 500
  connections with one stream each, so 500 concurrent streams: 2 calls/s each = 1,000/s) for a
  bounded duration against `tally serve --workers 2` with the whole chain; achieved rate,
  P95, P99, errors.

Each run records the CPU time of the processes involved (the server's workers, PostgreSQL's
processes, Redis, h2load) from /proc and getrusage, so the report says what saturated.
"""

from __future__ import annotations

import os
import resource
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h2load_runner
import pgdb
from chain import BenchKeys, redis_url
from google.protobuf import json_format
from h2load_runner import H2loadResult
from processes import _JWT_SECRET as JWT_SECRET
from processes import BENCH_DIR, BenchError, Server, _spawn, mint_token, start_tally, tally_env
from report import Measurement, percentile
from rest import check_rest, measure_rest_get, rest_url
from scenarios import (
    CLIENT_TIMEOUT_SECONDS,
    Bench,
    H2loadJob,
    Target,
    auth_header,
    check_get,
    get_request_body,
    h2load_row,
    progress,
    replies_in,
    run_h2load,
    unary,
    warn,
)

from tally.account.v1 import account_pb2

LOOP = "uvloop"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
GET_PATH = "/tally.account.v1.AccountService/GetAccount"
WORKER_CONNECTIONS = 16
OPEN_LOOP_RATE = 1_000
OPEN_LOOP_STREAMS = 500
BASELINE_RATE_LIMIT = 1_000_000


def workers_name(count: int) -> str:
    return f"tally --workers {count}, Health/Check"


def rest_name(count: int) -> str:
    return f"tally REST --workers {count}"


def baseline_name(count: int) -> str:
    return f"FastAPI baseline, uvicorn --workers {count}"


# ---- CPU accounting ----


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class CpuSample:
    """CPU seconds per process group, between `start` and `stop`, as % of one core."""

    groups: dict[str, Callable[[], list[int]]]
    before: dict[str, dict[int, float]] = field(default_factory=dict)
    children_before: float = 0.0
    wall_before: float = 0.0
    machine_before: tuple[int, int] = (0, 0)
    percent: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.before = {name: {pid: _cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children_before = usage.ru_utime + usage.ru_stime
        self.wall_before = time.monotonic()
        self.machine_before = _machine_ticks()

    def stop(self) -> None:
        wall = time.monotonic() - self.wall_before
        for name, pids in self.groups.items():
            # Processes that started during the run (PostgreSQL backends) count from 0.
            used = sum(_cpu_seconds(pid) - self.before[name].get(pid, 0.0) for pid in pids())
            self.percent[name] = 100 * used / wall if wall else 0.0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        # h2load is the only child of the bench that exits during a run.
        self.percent["h2load"] = 100 * (usage.ru_utime + usage.ru_stime - self.children_before) / wall
        busy, total = _machine_ticks()
        cpus = os.cpu_count() or 1
        spent = total - self.machine_before[1]
        machine = 100 * cpus * (busy - self.machine_before[0]) / spent if spent else 0.0
        self.percent["anything else"] = max(0.0, machine - sum(self.percent.values()))
        self.percent[f"whole machine (of {100 * cpus}%)"] = machine

    def describe(self) -> str:
        return ", ".join(f"{name} {value:.0f}%" for name, value in self.percent.items())


def cpu_groups(server: Server, label: str) -> dict[str, Callable[[], list[int]]]:
    groups: dict[str, Callable[[], list[int]]] = {}
    for index, pid in enumerate(server.worker_pids):
        groups[f"{label} {index}" if len(server.worker_pids) > 1 else label] = lambda pid=pid: [pid]
    groups["postgres"] = lambda: _pids_named("postgres")
    groups["redis"] = lambda: _pids_named("redis-server")
    return groups


@contextmanager
def sampling(groups: dict[str, Callable[[], list[int]]]) -> Iterator[CpuSample]:
    sample = CpuSample(groups)
    sample.start()
    yield sample
    sample.stop()


@dataclass
class CoresReport:
    skipped: str = ""
    cpu: dict[str, str] = field(default_factory=dict)  # measurement name -> CPU by process
    split: dict[str, str] = field(default_factory=dict)  # measurement name -> calls per worker pid
    open_loop: OpenLoop | None = None
    database: str = ""
    subject: str = ""
    redis_url: str = ""
    cache: str = ""


# ---- workers on the echo-like path ----


def _h2load_grpc(
    bench: Bench, address: str, method: str, body_file: Path, requests: int, token: str
) -> H2loadResult:
    return h2load_runner.run(
        bench.h2load,
        f"http://{address}{method}",
        body_file,
        requests=requests,
        concurrency=bench.options.concurrency,
        connections=WORKER_CONNECTIONS,
        timeout=bench.options.seconds * 3 + 30,
        headers=auth_header(token),
    )


def calls_by_worker(server: Server, method: str) -> dict[int, float]:
    """OK calls of `method` counted by each worker, from /metrics scraped on new connections until
    every worker has answered (or 50 scrapes)."""
    seen: dict[int, float] = {}
    for _ in range(50):
        with urllib.request.urlopen(f"http://{server.http_address}/metrics", timeout=10) as response:
            text, pid = response.read().decode(), int(response.headers.get("X-Tally-Pid", "0"))
        seen[pid] = sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("tally_rpc_requests_total{")
            and f'method="{method}"' in line
            and 'code="OK"' in line
        )
        if set(server.worker_pids) <= set(seen):
            break
    return seen


def measure_workers(
    bench: Bench, stack: ExitStack, database: pgdb.BenchDatabase, report: CoresReport
) -> None:
    body_file = bench.workdir / "health.body"
    body_file.write_bytes(h2load_runner.grpc_frame(b""))
    reply = b"\x08\x01"  # HealthCheckResponse(status=SERVING)
    for count in (1, 2):
        name = workers_name(count)
        progress(f"starting tally serve --workers {count} ({LOOP}) for Health/Check...")
        server = start_tally(database, bench.data_dir, LOOP, label=f"workers-{count}", workers=count)
        stack.callback(server.stop)
        if unary(server.address, HEALTH_METHOD, b"") != reply:
            raise BenchError(f"{server.name}: Health/Check did not answer SERVING")
        probe = _h2load_grpc(
            bench, server.address, HEALTH_METHOD, body_file, bench.options.warmup, bench.token
        )
        requests = min(
            bench.options.requests * 2, max(bench.options.warmup, int(probe.rps * bench.options.seconds))
        )
        progress(
            f"Health/Check via h2load, {name}, {requests} calls over {WORKER_CONNECTIONS} connections..."
        )
        before = calls_by_worker(server, HEALTH_METHOD.lstrip("/"))
        with sampling(cpu_groups(server, "tally worker")) as cpu:
            result = _h2load_grpc(bench, server.address, HEALTH_METHOD, body_file, requests, bench.token)
        after = calls_by_worker(server, HEALTH_METHOD.lstrip("/"))
        report.cpu[name] = cpu.describe()
        if count > 1:
            report.split[name] = ", ".join(
                f"pid {pid}: {after.get(pid, 0) - before.get(pid, 0):,.0f}" for pid in server.worker_pids
            )
        target = Target(server, LOOP, "1/1")
        successes = min(replies_in(result, len(reply)), result.http_ok)
        bench.cores_results.append(
            h2load_row(result, target, (name, "Health/Check"), successes, "reply bytes")
        )
        server.stop()


# ---- the FastAPI baseline ----


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_baseline(database: pgdb.BenchDatabase, data_dir: Path, workers: int) -> Server:
    port = free_port()
    env = tally_env(None, data_dir)
    env.update(
        BASELINE_DATABASE_URL=database.sqlalchemy_url,
        BASELINE_REDIS_URL=redis_url(),
        BASELINE_JWT_SECRET=JWT_SECRET,
        BASELINE_RATE_LIMIT=str(BASELINE_RATE_LIMIT),
    )
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "baseline_fastapi:app",
        f"--app-dir={BENCH_DIR}",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--workers={workers}",
        "--no-access-log",  # the app writes its own JSON access line
        "--loop=uvloop",
        "--http=httptools",
        "--log-level=info",
    ]
    server = _spawn(
        f"FastAPI baseline ({workers} worker(s))", command, data_dir / f"baseline-{workers}.log", env
    )
    # uvicorn logs in plain text: wait for "Application startup complete." once per worker.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = server.log_path.read_text(errors="replace")
        started = [1 for line in text.splitlines() if "Application startup complete" in line]
        if len(started) >= workers:
            break
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        time.sleep(0.05)
    else:
        server.stop()
        raise BenchError(f"{server.name} did not start in 30 s:\n{server.log_tail()}")
    server.http_address = f"127.0.0.1:{port}"
    server.address = server.http_address
    return server


def check_baseline(server: Server, account_id: str, token: str) -> bytes:
    request = urllib.request.Request(  # noqa: S310 (http://127.0.0.1 only)
        rest_url(server, account_id), headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_SECONDS) as response:  # noqa: S310
            body = bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise BenchError(f"baseline GET failed: {exc}") from None
    if account_id.encode() not in body:
        raise BenchError(f"the baseline answered another account: {body[:300]!r}")
    try:
        urllib.request.urlopen(rest_url(server, account_id), timeout=CLIENT_TIMEOUT_SECONDS)  # noqa: S310
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise BenchError(f"baseline GET without a token: HTTP {exc.code}, not 401") from None
    else:
        raise BenchError("the baseline answered without a token")
    return body


def measure_baseline_get(bench: Bench, target: Target, account_id: str, token: str, name: str) -> Measurement:
    reply = check_baseline(target.server, account_id, token)
    url = rest_url(target.server, account_id)
    log_base = bench.workdir / f"baseline-{name.replace(' ', '-')}.get"
    probe = run_h2load(bench, H2loadJob(url, log_base, bench.options.warmup, auth_header(token)), http1=True)
    requests = min(bench.options.requests, max(bench.options.warmup, int(probe.rps * bench.options.seconds)))
    result = run_h2load(bench, H2loadJob(url, log_base, requests, auth_header(token)), http1=True)
    if check_baseline(target.server, account_id, token) != reply:
        warn("the baseline's reply changed during the run")
    if result.status_other:
        warn(f"{name}: h2load saw {result.status_other} non-2xx answers")
    return h2load_row(result, target, (name, "GET account"), result.status_2xx, "h2load 2xx; urllib check")


def measure_baseline(
    bench: Bench,
    stack: ExitStack,
    database: pgdb.BenchDatabase,
    account_id: str,
    token: str,
    report: CoresReport,
) -> None:
    for count in (1, 2):
        progress(f"starting tally serve --workers {count}, full chain (Redis, spans exported)...")
        tally = start_tally(
            database,
            bench.data_dir,
            LOOP,
            label=f"rest-workers-{count}",
            redis_url=report.redis_url,
            traces_exporter="console",
            workers=count,
        )
        stack.callback(tally.stop)
        reply = check_get(tally, get_request_body(account_id), account_id, token)
        expected = json_format.MessageToDict(account_pb2.Account.FromString(reply))
        check_rest(tally, account_id, token, expected)
        progress(f"starting the FastAPI baseline, uvicorn --workers {count}...")
        baseline = start_baseline(database, bench.data_dir, count)
        stack.callback(baseline.stop)
        for number in range(bench.options.rest_rounds):
            order = ["tally", "baseline"] if number % 2 == 0 else ["baseline", "tally"]
            for which in order:
                label = f"round {number + 1}/{bench.options.rest_rounds}"
                if which == "tally":
                    progress(f"REST GetAccount, {rest_name(count)} ({label})...")
                    with sampling(cpu_groups(tally, "tally worker")) as cpu:
                        row = measure_rest_get(bench, Target(tally, LOOP, label), account_id, expected)
                    row.target = rest_name(count)
                    report.cpu[rest_name(count)] = cpu.describe()
                else:
                    progress(f"GET account, {baseline_name(count)} ({label})...")
                    processes = _tree(baseline.process.pid)
                    baseline.worker_pids = processes[1:] or processes  # uvicorn's workers, if any
                    groups = cpu_groups(baseline, "uvicorn")
                    with sampling(groups) as cpu:
                        row = measure_baseline_get(
                            bench, Target(baseline, LOOP, label), account_id, token, baseline_name(count)
                        )
                    report.cpu[baseline_name(count)] = cpu.describe()
                bench.cores_results.append(row)
        tally.stop()
        baseline.stop()


def _tree(root: int) -> list[int]:
    """`root` and its descendants (uvicorn's worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


# ---- the open loop ----


@dataclass
class OpenLoop:
    offered: int
    streams: int
    seconds: float
    started: int
    replies: int
    errors: int  # calls that finished without a reply
    unfinished: int  # calls still in flight when the duration ended
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu: str

    @property
    def achieved(self) -> float:
        return self.replies / self.seconds if self.seconds else 0.0


def measure_open_loop(
    bench: Bench,
    stack: ExitStack,
    database: pgdb.BenchDatabase,
    account_id: str,
    token: str,
    report: CoresReport,
) -> None:
    seconds = 5.0 if bench.options.requests < 1000 else 20.0
    progress("starting tally serve --workers 2, full chain, for the open loop...")
    server = start_tally(
        database,
        bench.data_dir,
        LOOP,
        label="open-loop",
        redis_url=report.redis_url,
        traces_exporter="console",
        workers=2,
    )
    stack.callback(server.stop)
    body = get_request_body(account_id)
    reply = check_get(server, body, account_id, token)
    body_file = bench.workdir / "open-loop.body"
    body_file.write_bytes(h2load_runner.grpc_frame(body))
    log_file = body_file.with_suffix(".h2load.log")
    per_connection = OPEN_LOOP_RATE / OPEN_LOOP_STREAMS
    command = [
        bench.h2load,
        f"--clients={OPEN_LOOP_STREAMS}",
        "--max-concurrent-streams=1",
        f"--rps={per_connection:g}",
        f"--duration={seconds:g}",
        "--warm-up-time=2",
        "--threads=1",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--data={body_file}",
        *(f"--header={header}" for header in auth_header(token)),
        f"--log-file={log_file}",
        f"http://{server.address}{GET_PATH}",
    ]
    progress(
        f"open loop: {OPEN_LOOP_RATE}/s offered ({OPEN_LOOP_STREAMS} connections x {per_connection:g}/s, "
        f"one stream each) for {seconds:g} s..."
    )
    with sampling(cpu_groups(server, "tally worker")) as cpu:
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if result.returncode != 0:
        raise BenchError(f"h2load (open loop) failed ({result.returncode}):\n{result.stderr[-1500:]}")
    output = result.stdout
    counts = h2load_runner._REQUESTS.search(output)
    data = h2load_runner._DATA.search(output)
    if counts is None or data is None:
        raise BenchError(f"unexpected h2load output:\n{output[-1500:]}")
    started, done, succeeded = int(counts.group(2)), int(counts.group(3)), int(counts.group(4))
    frame = len(reply) + 5
    replies = min(int(data.group(1)) // frame, succeeded)
    latencies = sorted(h2load_runner._log_latencies_ms(log_file))
    check_get(server, body, account_id, token)
    report.split["open loop"] = ", ".join(
        f"pid {pid}: {calls:,.0f}" for pid, calls in calls_by_worker(server, GET_PATH.lstrip("/")).items()
    )
    server.stop()
    report.open_loop = OpenLoop(
        offered=OPEN_LOOP_RATE,
        streams=OPEN_LOOP_STREAMS,
        seconds=seconds,
        started=started,
        replies=replies,
        errors=done - replies,
        unfinished=started - done,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        cpu=cpu.describe(),
    )
    if done < started:
        warn(f"open loop: {started - done} calls were still in flight when h2load stopped")


def measure_cores(
    bench: Bench, stack: ExitStack, database: pgdb.BenchDatabase, account_id: str, parts: set[str]
) -> CoresReport:
    report = CoresReport(redis_url=redis_url())
    if "workers" in parts:
        measure_workers(bench, stack, database, report)
    if not parts & {"baseline", "open-loop"}:
        return report
    report.subject = f"bench-cores-{secrets.token_hex(4)}"
    keys = BenchKeys(report.redis_url, report.subject)
    stack.callback(keys.client.close)
    try:
        keys.client.ping()
    except Exception as exc:  # any Redis failure skips the parts that need it
        report.skipped = f"Redis at {report.redis_url} is unreachable ({exc})"
        warn(f"baseline and open-loop parts skipped: {report.skipped}")
        return report
    stack.callback(keys.flush_quietly)
    token = mint_token(tally_env(database, bench.data_dir), report.subject)
    if "baseline" in parts:
        measure_baseline(bench, stack, database, account_id, token, report)
    if "open-loop" in parts:
        measure_open_loop(bench, stack, database, account_id, token, report)
    keys.flush_quietly()
    for key in keys.client.scan_iter(match=f"baseline:rl:cli:{report.subject}:*", count=1000):
        keys.client.delete(key)
    return report

"""The measurements: each one drives one server with one load generator and appends a Measurement.

Successes are counted on the server side wherever the generator cannot see them:
the echo server's own counter, complete reply messages in h2load's DATA bytes
(plus a gRPC client check of the same request before and after), and new rows in
the `accounts` table for CreateAccount.

Every call, echo included, carries the same `authorization: Bearer <token>` header
(Tally refuses account RPCs without one; the echo and bare servers ignore it), so
every target receives the same request bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import h2load_runner
import pgdb
from h2load_runner import H2loadResult
from loadgen import TOKEN_VARIABLE
from processes import BENCH_DIR, BenchError, Server
from report import Measurement

from core import ids
from tally.account.v1 import account_pb2

ECHO_METHOD = "/bench.Echo/Echo"
SERVED_METHOD = "/bench.Echo/Served"
GET_METHOD = "/tally.account.v1.AccountService/GetAccount"
CREATE_METHOD = "/tally.account.v1.AccountService/CreateAccount"
CLIENT_TIMEOUT_SECONDS = 10.0
GRPC_FRAME_HEADER = 5


@dataclass(frozen=True)
class Options:
    requests: int  # at most this many timed calls per run
    seconds: float  # and about this long
    concurrency: int  # calls in flight
    connections: int  # HTTP/2 connections per generator
    warmup: int  # untimed calls before each run
    rounds: int  # each measurement this many times, loops alternating in order
    chain_rounds: int  # runs per target of the interceptor-chain part
    rest_rounds: int = 1  # runs per protocol of the REST vs gRPC part
    only: str = ""  # run only this part (run.py's --only)


@dataclass
class Bench:
    options: Options
    workdir: Path
    h2load: str
    token: str = ""  # bearer token for every call of the main table
    results: list[Measurement] = field(default_factory=list)
    chain_results: list[Measurement] = field(default_factory=list)  # the interceptor-chain part
    rest_results: list[Measurement] = field(default_factory=list)  # the REST vs gRPC part
    cores_results: list[Measurement] = field(default_factory=list)  # workers, baseline (bench/cores.py)

    @property
    def data_dir(self) -> Path:
        """TALLY_DATA_DIR of every tally process (and where their logs go)."""
        return self.workdir / "tally-data"


@dataclass(frozen=True)
class Target:
    """One server under test, in one round."""

    server: Server
    loop: str
    round_label: str

    def describe(self) -> str:
        return f"{self.loop}, {self.round_label}"


def progress(message: str) -> None:
    print(f"==> {message}", flush=True)


def warn(message: str) -> None:
    print(f"    warning: {message}", flush=True)


# ---- a small synchronous gRPC client, for set-up and checks (never for the load) ----


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def auth_header(token: str) -> tuple[str, ...]:
    return (f"authorization: Bearer {token}",) if token else ()


def unary(address: str, method: str, body: bytes, token: str = "") -> bytes:
    """One unary call with raw bytes in and out (no serializers), with the bearer token if given."""
    with grpc.insecure_channel(address) as channel:
        response: bytes = channel.unary_unary(method)(
            body, timeout=CLIENT_TIMEOUT_SECONDS, metadata=auth_metadata(token)
        )
    return response


def echo_served(server: Server) -> int:
    return int(unary(server.address, SERVED_METHOD, b""))


def get_request_body(account_id: str) -> bytes:
    return account_pb2.GetAccountRequest(id=account_id).SerializeToString()


def create_request_body(email: str) -> bytes:
    account = account_pb2.Account(display_name="Bench account", email=email, currency_code="USD")
    return account_pb2.CreateAccountRequest(account=account).SerializeToString()


def create_account(server: Server, token: str) -> str:
    body = create_request_body(f"bench-{secrets.token_hex(6)}@example.com")
    try:
        reply = unary(server.address, CREATE_METHOD, body, token)
    except grpc.RpcError as exc:
        raise BenchError(f"CreateAccount failed: {exc.code().name}: {exc.details()}") from None
    return str(account_pb2.Account.FromString(reply).id)


def check_get(server: Server, body: bytes, account_id: str, token: str) -> bytes:
    """The exact GetAccount request h2load sends succeeds and names the account; returns the reply."""
    try:
        reply = unary(server.address, GET_METHOD, body, token)
    except grpc.RpcError as exc:
        raise BenchError(
            f"GetAccount check on {server.name} failed: {exc.code().name}: {exc.details()}"
        ) from None
    if account_pb2.Account.FromString(reply).id != account_id:
        raise BenchError(f"GetAccount check returned another account than {account_id}")
    return reply


# ---- the two load generators ----


@dataclass(frozen=True)
class H2loadJob:
    url: str
    body_file: Path
    requests: int
    headers: tuple[str, ...] = ()


def run_h2load(bench: Bench, job: H2loadJob, *, http1: bool = False) -> H2loadResult:
    """h2load with the bench's concurrency; `http1`: plain HTTP/1.1 GETs (job.body_file names the log)."""
    options = bench.options
    return h2load_runner.run(
        bench.h2load,
        job.url,
        job.body_file,
        requests=job.requests,
        concurrency=options.concurrency,
        connections=options.connections,
        timeout=options.seconds * 3 + 30,
        headers=job.headers,
        http1=http1,
    )


def prepare_h2load(
    bench: Bench, target: Target, method: str, message: bytes, label: str, token: str
) -> H2loadJob:
    """Write the body file and run a short probe, which warms up and sizes the timed run.

    The timed run gets at most --requests calls, and about --seconds at the probe's rate.
    Both send `authorization: Bearer <token>`.
    """
    options = bench.options
    body_file = bench.workdir / f"{label}-{target.loop}.body"
    body_file.write_bytes(h2load_runner.grpc_frame(message))
    url = f"http://{target.server.address}{method}"
    headers = auth_header(token)
    probe_requests = min(options.requests, options.warmup)
    probe = run_h2load(bench, H2loadJob(url, body_file, probe_requests, headers))
    requests = min(options.requests, max(probe_requests, int(probe.rps * options.seconds)))
    return H2loadJob(url, body_file, requests, headers)


def replies_in(result: H2loadResult, reply_size: int) -> int:
    """Complete gRPC reply messages in h2load's response DATA byte count."""
    frame = reply_size + GRPC_FRAME_HEADER
    if result.data_bytes % frame:
        warn(f"response DATA bytes ({result.data_bytes}) are not a whole number of {frame}-byte replies")
    return result.data_bytes // frame


def run_loadgen(bench: Bench, target: Target, rpc: str, *extra: str) -> dict[str, Any]:
    """The Python closed-loop generator in its own process; returns its JSON outcome."""
    options = bench.options
    command = [
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        f"--target={target.server.address}",
        f"--rpc={rpc}",
        f"--requests={options.requests}",
        f"--seconds={options.seconds}",
        f"--concurrency={options.concurrency}",
        f"--connections={options.connections}",
        f"--warmup={options.warmup}",
        *extra,
    ]
    timeout = 2 * options.seconds + 60  # warm-up and timed part are each capped at --seconds
    env = {**os.environ, TOKEN_VARIABLE: bench.token}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if result.returncode != 0:
        raise BenchError(f"load generator failed ({result.returncode}):\n{result.stderr[-2000:]}")
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    if outcome["errors"]:
        warn(f"{rpc}: gRPC errors seen by the load generator: {outcome['errors']}")
    return outcome


def h2load_row(
    result: H2loadResult, target: Target, name: tuple[str, str], successes: int, counted_by: str
) -> Measurement:
    return Measurement(
        target=name[0],
        rpc=name[1],
        generator="h2load",
        loop=target.loop,
        seconds=result.seconds,
        responses=result.done,
        latencies_ms=result.latencies_ms,
        successes=successes,
        sent=result.requests,
        counted_by=counted_by,
    )


def loadgen_row(
    outcome: dict[str, Any], target: Target, name: tuple[str, str], successes: int, counted_by: str
) -> Measurement:
    answered = int(outcome["ok"]) + sum(outcome["errors"].values())
    return Measurement(
        target=name[0],
        rpc=name[1],
        generator="python",
        loop=target.loop,
        seconds=float(outcome["seconds"]),
        responses=answered,
        latencies_ms=outcome["latencies_ms"],
        successes=successes,
        sent=answered,
        counted_by=counted_by,
    )


# ---- echo ----


def echo_h2load(bench: Bench, target: Target) -> None:
    message = b"x" * len(get_request_body(ids.new_id("acct")))
    progress(
        f"Echo via h2load ({target.describe()}), {len(message)}-byte payload like a GetAccountRequest..."
    )
    job = prepare_h2load(bench, target, ECHO_METHOD, message, "echo", bench.token)
    before = echo_served(target.server)
    result = run_h2load(bench, job)
    served = echo_served(target.server) - before
    replies = replies_in(result, len(message))
    if replies != served:
        warn(f"the echo server counted {served} calls but h2load received {replies} replies")
    bench.results.append(h2load_row(result, target, ("echo", "Echo"), served, "echo server counter"))


def echo_python(bench: Bench, target: Target) -> None:
    size = len(create_request_body("bench-run-0000000@example.com"))
    progress(f"Echo via Python load generator ({target.describe()}), {size}-byte payload...")
    before = echo_served(target.server)
    outcome = run_loadgen(bench, target, "echo", f"--payload-size={size}")
    served = echo_served(target.server) - before - outcome["warmup_ok"]
    bench.results.append(loadgen_row(outcome, target, ("echo", "Echo"), served, "echo server counter"))


# ---- tally ----


def get_h2load(bench: Bench, target: Target, account_id: str) -> None:
    progress(f"GetAccount via h2load ({target.describe()})...")
    row = measure_get_h2load(bench, target, account_id, bench.token, "get", "tally")
    bench.results.append(row)


def measure_get_h2load(
    bench: Bench, target: Target, account_id: str, token: str, label: str, name: str
) -> Measurement:
    """GetAccount via h2load, the same request checked with a gRPC client before and after."""
    body = get_request_body(account_id)
    reply = check_get(target.server, body, account_id, token)
    job = prepare_h2load(bench, target, GET_METHOD, body, label, token)
    result = run_h2load(bench, job)
    if check_get(target.server, body, account_id, token) != reply:
        warn("the GetAccount reply changed during the run")
    successes = min(replies_in(result, len(reply)), result.http_ok)
    counted_by = "reply bytes; client check before+after"
    return h2load_row(result, target, (name, "GetAccount"), successes, counted_by)


def get_python(bench: Bench, target: Target, account_id: str) -> None:
    progress(f"GetAccount via Python load generator ({target.describe()})...")
    outcome = run_loadgen(bench, target, "get", f"--account-id={account_id}")
    row = loadgen_row(outcome, target, ("tally", "GetAccount"), outcome["ok"], "client (status OK)")
    bench.results.append(row)


def create_python(bench: Bench, target: Target, database: pgdb.BenchDatabase) -> None:
    progress(f"CreateAccount via Python load generator ({target.describe()})...")
    before = pgdb.count_rows(database, "accounts")
    outcome = run_loadgen(bench, target, "create", f"--tag={target.loop}-{secrets.token_hex(3)}")
    created = pgdb.count_rows(database, "accounts") - before - outcome["warmup_ok"]
    if created != outcome["ok"]:
        warn(f"CreateAccount: {created} new rows but the client saw {outcome['ok']} successes")
    row = loadgen_row(outcome, target, ("tally", "CreateAccount"), created, "new rows in accounts")
    bench.results.append(row)

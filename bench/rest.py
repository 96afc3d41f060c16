"""GetAccount over REST (the gateway, HTTP/1.1 + JSON) against GetAccount over gRPC, one server.

One `tally serve` on uvloop, on the bench database, with the run's settings
(rate limits far above the load, spans created but not exported), serves both:

* gRPC: h2load POSTs the gRPC-framed GetAccountRequest to the gRPC port, as in the
  main rounds; successes are complete reply messages in the DATA bytes.
* REST: h2load --h1 GETs `/v1/accounts/<id>` on the HTTP port; the gateway turns it
  into the same GetAccount over a loopback gRPC channel to the same server, so the
  whole interceptor chain runs for it too. Successes are h2load's 2xx count.

Both carry `authorization: Bearer <token>` and the same number of requests in flight
(gRPC: --concurrency streams over --connections HTTP/2 connections; REST: --concurrency
HTTP/1.1 connections, one request in flight on each). Before and after every run the
request is checked: gRPC with a gRPC client, REST with one urllib GET whose JSON must
name the account and match the gRPC reply.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgdb
from google.protobuf import json_format
from h2load_runner import H2loadResult
from processes import BenchError, Server, start_tally
from report import Measurement
from scenarios import (
    CLIENT_TIMEOUT_SECONDS,
    Bench,
    H2loadJob,
    Target,
    auth_header,
    check_get,
    get_request_body,
    h2load_row,
    measure_get_h2load,
    progress,
    run_h2load,
    warn,
)

from tally.account.v1 import account_pb2

LOOP = "uvloop"
GRPC = "gRPC (h2load, HTTP/2)"
REST = "REST (h2load --h1, HTTP/1.1)"
REST_PATH = "/v1/accounts/{id}"


@dataclass
class RestReport:
    rounds: int = 0
    server: str = ""  # "gRPC on ..., HTTP on ..."
    database: str = ""
    json_bytes: int = 0  # length of the REST reply body


def rest_url(server: Server, account_id: str) -> str:
    return f"http://{server.http_address}{REST_PATH.format(id=account_id)}"


def check_rest(server: Server, account_id: str, token: str, expected: dict[str, Any]) -> bytes:
    """One urllib GET of the exact URL h2load requests: 200, JSON equal to the gRPC reply's."""
    request = urllib.request.Request(  # noqa: S310 (http://127.0.0.1 only)
        rest_url(server, account_id), headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_SECONDS) as response:  # noqa: S310
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        raise BenchError(f"REST GetAccount check: HTTP {exc.code}: {exc.read()[:500]!r}") from None
    except OSError as exc:
        raise BenchError(f"REST GetAccount check on {server.http_address} failed: {exc}") from None
    if status != 200:
        raise BenchError(f"REST GetAccount check: HTTP {status}")
    data = json.loads(body)
    if data != expected:
        raise BenchError(f"REST GetAccount check: the JSON differs from the gRPC reply: {data} != {expected}")
    return bytes(body)


def check_unauthenticated(server: Server, account_id: str) -> None:
    """Without the token the gateway must answer 401: auth runs on the REST path too."""
    request = urllib.request.Request(rest_url(server, account_id))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_SECONDS):  # noqa: S310
            pass
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return
        raise BenchError(f"REST GetAccount without a token: HTTP {exc.code}, not 401") from None
    raise BenchError("REST GetAccount answered without a token: is auth on?")


def prepare_rest(bench: Bench, target: Target, account_id: str) -> H2loadJob:
    """A short probe (warm-up, sizing), as for gRPC: at most --requests and about --seconds."""
    options = bench.options
    log_base = bench.workdir / f"rest-{target.loop}.get"
    url = rest_url(target.server, account_id)
    headers = auth_header(bench.token)
    probe_requests = min(options.requests, options.warmup)
    probe = run_h2load(bench, H2loadJob(url, log_base, probe_requests, headers), http1=True)
    requests = min(options.requests, max(probe_requests, int(probe.rps * options.seconds)))
    return H2loadJob(url, log_base, requests, headers)


def measure_rest_get(bench: Bench, target: Target, account_id: str, expected: dict[str, Any]) -> Measurement:
    reply = check_rest(target.server, account_id, bench.token, expected)
    job = prepare_rest(bench, target, account_id)
    result: H2loadResult = run_h2load(bench, job, http1=True)
    if check_rest(target.server, account_id, bench.token, expected) != reply:
        warn("the REST GetAccount reply changed during the run")
    if result.status_other:
        warn(f"REST: h2load saw {result.status_other} non-2xx answers")
    if result.status_2xx and result.data_bytes % len(reply):
        warn(
            f"REST: response body bytes ({result.data_bytes}) are not a whole number "
            f"of {len(reply)}-byte replies"
        )
    return h2load_row(
        result, target, (REST, "GetAccount"), result.status_2xx, "h2load 2xx; urllib check before+after"
    )


def measure_rest(
    bench: Bench, stack: ExitStack, database: pgdb.BenchDatabase, data_dir: Path, account_id: str
) -> RestReport:
    """Start one tally serve, measure gRPC and REST GetAccount --rest-rounds times each, stop it."""
    report = RestReport(rounds=bench.options.rest_rounds)
    progress(f"starting tally serve for REST vs gRPC ({LOOP})...")
    server = start_tally(database, data_dir, LOOP, label="rest")
    stack.callback(server.stop)
    if not server.http_address:
        raise BenchError("tally serve's start-up log line has no http_addr: is the REST gateway on?")
    report.server = f"gRPC on {server.address}, HTTP on {server.http_address}"
    report.database = server.database
    progress(f"tally ({LOOP}) serving {report.server}")
    body = get_request_body(account_id)
    reply = check_get(server, body, account_id, bench.token)
    expected = json_format.MessageToDict(account_pb2.Account.FromString(reply))
    report.json_bytes = len(check_rest(server, account_id, bench.token, expected))
    check_unauthenticated(server, account_id)
    for number in range(report.rounds):
        order = [GRPC, REST] if number % 2 == 0 else [REST, GRPC]
        for name in order:
            target = Target(server, LOOP, f"round {number + 1}/{report.rounds}")
            progress(f"GetAccount over {name} ({target.describe()})...")
            if name == GRPC:
                row = measure_get_h2load(bench, target, account_id, bench.token, "rest-grpc-get", GRPC)
            else:
                row = measure_rest_get(bench, target, account_id, expected)
            bench.rest_results.append(row)
    server.stop()
    return report

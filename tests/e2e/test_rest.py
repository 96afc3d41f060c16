"""End to end: the REST/JSON gateway, fuzzed by stock schemathesis on its live /openapi.json; stand-alone."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    START_DEADLINE_SECONDS,
    RunningServer,
    admin_token,
    running_server,
    server_env,
    stop_gracefully,
    tally_command,
)
from tests.support import free_port

pytestmark = pytest.mark.e2e

# A rate limit far above anything the fuzzer sends, so 429s never hide a real answer.
NO_RATE_LIMITS = json.dumps(
    {"default": {"rate": 100000, "burst": 100000}, "auth": {"rate": 100000, "burst": 100000}}
)
GATEWAY_MARKER = "tally gateway on"
HTTP_TIMEOUT_SECONDS = 10


def request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One HTTP call: (status, headers, JSON body or None); error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{base}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310 (http://)
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    return status, headers, json.loads(raw) if raw else None


# --- 1. stock schemathesis against the live /openapi.json -----------------------------------------------


@pytest.fixture(scope="module")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("rest")
    # A webhook secret, so that Stripe's webhooks answer for their signature (a generated one is
    # 400) rather than 503 WEBHOOK_NOT_CONFIGURED to every case.
    env = server_env(data_dir, TALLY_RATE_LIMITS=NO_RATE_LIMITS, TALLY_STRIPE_WEBHOOK_SECRET="whsec_fuzz")
    with running_server(env, data_dir) as server:
        assert server.http_addr, f"the serving line has no http_addr:\n{server.stderr}"
        assert server.http_addr.startswith("127.0.0.1:"), server.http_addr  # loopback only
        yield server


SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
# Per operation and phase; with the fixed seed the whole run takes about three and a half minutes
# here on a quiet machine (most of it schemathesis's own generation, on one core), and 5 to 6 on a
# loaded one (81 operations), past the suite's 120 s per-test hang guard: the bound is a hang guard,
# with room for a loaded machine, not a speed check.
MAX_EXAMPLES = 10
SEED = 1
SCHEMATHESIS_TIMEOUT_SECONDS = 600
_COVERED_LINKS = re.compile(r"API Links:\s+(\d+) covered / (\d+) selected")


def explicit_links_applied(events: Path) -> set[str]:
    """The document's own links (not schemathesis's inferred ones) that a stateful step followed."""
    applied: set[str] = set()
    for line in events.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if not finished:
            continue
        for case in finished.get("recorder", {}).get("cases", {}).values():
            transition = case.get("transition")
            if case.get("is_transition_applied") and transition and not transition["is_inferred"]:
                applied.add(transition["id"].split(" -> ")[1].removeprefix("[200] "))
    return applied


@pytest.mark.timeout(SCHEMATHESIS_TIMEOUT_SECONDS + 60)  # the run has its own bound, above
def test_stock_schemathesis_passes_on_the_live_document(rest_server: RunningServer, tmp_path: Path) -> None:
    """`schemathesis run --checks all`, every phase, stateful included, on the document as served."""
    url = f"http://{rest_server.http_addr}/openapi.json"
    events = tmp_path / "events.ndjson"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(SCHEMATHESIS_CONFIG),
        "run",
        url,
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {admin_token()}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(events),
        "--no-color",
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SCHEMATHESIS_TIMEOUT_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    _, _, document = request(rest_server.http_addr, "GET", "/openapi.json")
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    operations = sum(1 for item in document["paths"].values() for method in item if method in methods)
    assert f"{operations} selected / {operations} total" in output, output  # every operation ran
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅\s+{phase}", output), f"{phase} did not pass:\n{output}"
    covered = _COVERED_LINKS.search(output)
    assert covered is not None, output
    assert int(covered.group(1)) > 0, output
    # The links the document declares (create -> get, update, delete) are among those followed.
    document_links = {
        name
        for item in document["paths"].values()
        for operation in item.values()
        for name in operation["responses"]["200"].get("links", {})
    }
    applied = explicit_links_applied(events)
    assert applied, output
    assert applied <= document_links, (applied, document_links)


def test_openapi_document_is_openapi_31(rest_server: RunningServer) -> None:
    status, headers, document = request(rest_server.http_addr, "GET", "/openapi.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert document["openapi"].startswith("3.1")
    assert "/v1/accounts" in document["paths"]


def test_path_parameter_with_newline_gets_a_json_error(rest_server: RunningServer) -> None:
    """Found by schemathesis (negative mode, DELETE /v1/accounts/{id}); any route, any method."""
    status, headers, body = request(rest_server.http_addr, "GET", "/v1/accounts/a%0Ab", token=admin_token())
    assert status == 400  # the text policy refuses the control character, naming the field
    assert headers["Content-Type"].startswith("application/json"), headers
    assert body["details"][1]["fieldViolations"][0]["field"] == "id", body


# --- 2. the stand-alone gateway -------------------------------------------------------------------------


def wait_for_gateway(gateway: RunningServer) -> None:
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while not any(message.startswith(GATEWAY_MARKER) for message in gateway.log_messages()):
        if gateway.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(
                f"tally gateway did not start (exit code {gateway.proc.poll()})\n"
                f"--- stderr ---\n{gateway.stderr}",
                pytrace=False,
            )
        time.sleep(0.05)


@pytest.fixture
def gateway_and_server(tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    """A `tally serve` and a `tally gateway --target` in front of its gRPC port."""
    env = server_env(tmp_path)
    with running_server(env, tmp_path) as server:
        http_addr = f"127.0.0.1:{free_port()}"
        proc = subprocess.Popen(
            [*tally_command(), "gateway", "--target", server.addr],
            env={**env, "TALLY_HTTP_ADDR": http_addr},
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        gateway = RunningServer(proc, addr=server.addr, http_addr=http_addr)
        try:
            gateway.start_reader()
            wait_for_gateway(gateway)
            yield server, gateway
        finally:
            gateway.kill()


def test_standalone_gateway_creates_reads_and_requires_auth(
    gateway_and_server: tuple[RunningServer, RunningServer],
) -> None:
    server, gateway = gateway_and_server
    base = gateway.http_addr
    assert base != server.http_addr
    token = admin_token()

    status, headers, created = request(
        base,
        "POST",
        "/v1/accounts",
        {"displayName": "Gateway Corp", "email": "billing@gateway.test", "currencyCode": "USD"},
        token=token,
    )
    assert status == 200, created
    assert headers["Content-Type"].startswith("application/json")
    assert headers.get("X-Request-Id")
    account_id = created["id"]
    assert account_id.startswith("acct_"), created

    status, _, fetched = request(base, "GET", f"/v1/accounts/{account_id}", token=token)
    assert status == 200, fetched
    assert fetched["id"] == account_id
    assert fetched["displayName"] == "Gateway Corp"

    status, headers, error = request(base, "GET", f"/v1/accounts/{account_id}")
    assert status == 401, error
    assert headers.get("WWW-Authenticate", "").startswith("Bearer"), headers
    assert error["code"] == 16, error  # UNAUTHENTICATED, the google.rpc.Status JSON

    status, _, _ = request(base, "GET", "/openapi.json")
    assert status == 200

    assert stop_gracefully(gateway, signal.SIGTERM, timeout=15) == 0, gateway.stderr


# --- 3. the REST call named in the README: service account id + secret for a token ------------------------


def test_readme_service_token_over_rest(rest_server: RunningServer) -> None:
    base = rest_server.http_addr
    status, _, created = request(
        base,
        "POST",
        "/v1/serviceAccounts",
        {"displayName": "billing-job", "scopes": ["accounts:read"]},
        token=admin_token(),
    )
    assert status == 200, created
    client_id = created["serviceAccount"]["id"]
    secret = created["clientSecret"]
    assert client_id.startswith("svc_") and secret, created

    status, _, issued = request(
        base, "POST", "/v1/auth:token", {"clientId": client_id, "clientSecret": secret}
    )
    assert status == 200, issued
    service_token = issued["accessToken"]

    status, _, listed = request(base, "GET", "/v1/accounts", token=service_token)
    assert status == 200, listed
    status, _, denied = request(
        base, "POST", "/v1/accounts", {"displayName": "x", "currencyCode": "USD"}, token=service_token
    )
    assert status == 403, denied

    status, _, refused = request(
        base, "POST", "/v1/auth:token", {"clientId": client_id, "clientSecret": "wrong"}
    )
    assert status == 401, refused

"""The HTTP port's edges over real HTTP, on each backend: request ids and Status JSON on every
answer (not only under /v1), malformed requests, a backend that is down, and the stand-alone
gateway's /healthz and /metrics.

Requests aiohttp's client would refuse to send (a NUL byte in a header) go as raw bytes over a
socket; `raw_http` reads the answer back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2

from app.gateway_server import StandaloneGateway, TargetHealth
from app.server import App, build
from core.settings import Settings
from tests.support import FakeMonotonic, cheap_passwords, free_port, mint

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# What a caller must never read in an error: Python's words, the library's, internal addresses.
LEAKS = (
    "Traceback",
    "invalid literal",
    "Exception",
    "<class",
    "aiohttp",
    "ipv4:",
    "ipv6:",
    "127.0.0.1",
    "connect",
)
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
ACCOUNT = {"displayName": "Edge Ltd", "email": "billing@edge.test", "currencyCode": "USD"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


async def fetch(base: str, method: str, path: str, **kwargs: Any) -> Answer:
    async with aiohttp.ClientSession() as session, session.request(method, base + path, **kwargs) as response:
        text = await response.text()
        headers = {name.lower(): value for name, value in response.headers.items()}
        is_json = response.content_type == "application/json"
        return Answer(response.status, headers, json.loads(text) if is_json and text else text)


async def raw_http(port: int, data: bytes, *, after_continue: bytes = b"") -> Answer:
    """Send `data` as it is (then, once the server says `100 Continue`, `after_continue`); the
    answer's status, headers and JSON body (the server closes after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if after_continue:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
            writer.write(after_continue)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)  # to EOF: the server closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, json.loads(body))


def assert_error(answer: Answer, http: int, reason: str) -> dict[str, Any]:
    """The google.rpc.Status JSON with an ErrorInfo of `reason`, a request id, nothing leaked."""
    assert answer.status == http, answer
    assert answer.headers["content-type"].startswith("application/json"), answer
    assert REQUEST_ID.fullmatch(answer.headers.get("x-request-id", "")), answer.headers
    body = answer.body
    assert isinstance(body, dict) and set(body) == {"code", "message", "details"}, body
    info = body["details"][0]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo", body
    assert (info["domain"], info["reason"]) == ("tally", reason), body
    text = json.dumps(body)
    assert not any(leak in text for leak in LEAKS), text
    return body


def warnings_and_worse(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def base(app: App) -> str:
    """`tally serve`'s HTTP port."""
    return f"http://127.0.0.1:{app.http_port}"


# --- 1. every answer: X-Request-Id, and errors as Status JSON ---------------------------------------------


async def test_every_answer_carries_a_request_id(app: App, base: str) -> None:
    admin = {"Authorization": f"Bearer {mint(app)}"}
    for path in ("/metrics", "/healthz", "/.well-known/jwks.json", "/openapi.json", "/v1/accounts"):
        answer = await fetch(base, "GET", path, headers=admin)
        assert answer.status == 200, (path, answer)
        assert REQUEST_ID.fullmatch(answer.headers.get("x-request-id", "")), (path, answer.headers)
    mine = await fetch(base, "GET", "/healthz", headers={"X-Request-Id": "lb-probe-7"})
    assert mine.headers["x-request-id"] == "lb-probe-7"
    insane = await fetch(base, "GET", "/metrics", headers={"X-Request-Id": "two words"})
    assert insane.headers["x-request-id"] != "two words" and REQUEST_ID.fullmatch(
        insane.headers["x-request-id"]
    )
    nowhere = await fetch(base, "GET", "/nowhere", headers={"X-Request-Id": "req-404"})
    assert nowhere.headers["x-request-id"] == "req-404"


async def test_unknown_routes_and_methods_are_status_json(app: App, base: str) -> None:
    body = assert_error(await fetch(base, "GET", "/nowhere"), 404, "ROUTE_NOT_FOUND")
    assert body["code"] == 5 and body["message"] == "no route for GET /nowhere"
    assert_error(await fetch(base, "GET", "/v1:nothing"), 404, "ROUTE_NOT_FOUND")
    assert_error(await fetch(base, "GET", "/v1/nothing/here"), 404, "ROUTE_NOT_FOUND")
    for method, path in (("POST", "/metrics"), ("DELETE", "/healthz"), ("PUT", "/openapi.json")):
        answer = await fetch(base, method, path)
        body = assert_error(answer, 405, "METHOD_NOT_ALLOWED")
        assert "GET" in answer.headers["allow"] and body["code"] == 12, answer
    assert_error(await fetch(base, "PUT", "/v1/accounts"), 405, "METHOD_NOT_ALLOWED")


async def test_a_bad_number_names_the_field(app: App, base: str) -> None:
    admin = {"Authorization": f"Bearer {mint(app)}"}
    answer = await fetch(base, "GET", "/v1/accounts?pageSize=abc", headers=admin)
    body = assert_error(answer, 400, "INVALID_ARGUMENT")
    assert body["message"] == "page_size: must be an integer from -2147483648 to 2147483647"
    assert body["details"][1]["fieldViolations"] == [
        {"field": "page_size", "description": "must be an integer from -2147483648 to 2147483647"}
    ]
    answer = await fetch(
        base, "POST", "/v1/accounts", json={**ACCOUNT, "metadata": {"tier": 3}}, headers=admin
    )
    body = assert_error(answer, 400, "INVALID_ARGUMENT")
    assert body["message"] == "account.metadata: must be a JSON object, each value a string"


async def test_a_body_past_the_limit_is_413(app: App, base: str) -> None:
    admin = {"Authorization": f"Bearer {mint(app)}"}
    too_big = {**ACCOUNT, "displayName": "x" * (app.settings.gateway_max_body_bytes + 1)}
    answer = await fetch(base, "POST", "/v1/accounts", json=too_big, headers=admin)
    assert_error(answer, 413, "BODY_TOO_LARGE")


async def test_the_metrics_count_answers_by_route_and_status(app: App, base: str) -> None:
    admin = {"Authorization": f"Bearer {mint(app)}"}
    created = await fetch(base, "POST", "/v1/accounts", json=ACCOUNT, headers=admin)
    assert created.status == 200, created
    await fetch(base, "GET", f"/v1/accounts/{created.body['id']}", headers=admin)
    await fetch(base, "GET", "/nowhere/else")
    text = (await fetch(base, "GET", "/metrics")).body
    assert 'tally_http_requests_total{method="POST",route="/v1/accounts",status="200"} 1.0' in text
    assert 'tally_http_requests_total{method="GET",route="/v1/accounts/{id}",status="200"} 1.0' in text
    assert 'tally_http_requests_total{method="GET",route="(unmatched)",status="404"} 1.0' in text
    assert 'tally_http_request_duration_seconds_count{method="POST",route="/v1/accounts"} 1.0' in text
    assert "/nowhere/else" not in text  # the raw path is never a label


# --- 2. malformed requests: one WARNING line and a JSON 400 -------------------------------------------------


async def test_a_nul_byte_in_a_header_is_one_warning_and_a_json_400(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    request = b"GET /healthz HTTP/1.1\r\nHost: tally\r\nX-Note: a\x00b\r\n\r\n"
    answer = await raw_http(app.http_port, request)
    body = assert_error(answer, 400, "MALFORMED_REQUEST")
    assert body["code"] == 3 and "header" in body["message"]
    problems = warnings_and_worse(caplog)
    assert [(r.name, r.levelname) for r in problems] == [("tally.http", "WARNING")], caplog.text
    assert problems[0].exc_info is None and "\n" not in problems[0].getMessage()
    assert (
        problems[0]
        .getMessage()
        .startswith("malformed HTTP request from 127.0.0.1: Invalid header value char")
    )


async def test_oversized_headers_are_431(app: App, caplog: pytest.LogCaptureFixture) -> None:
    long_header = b"GET /healthz HTTP/1.1\r\nHost: tally\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"
    body = assert_error(await raw_http(app.http_port, long_header), 431, "HEADERS_TOO_LARGE")
    assert "8190 bytes" in body["message"]
    long_url = b"GET /v1/accounts?filter=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: tally\r\n\r\n"
    assert_error(await raw_http(app.http_port, long_url), 431, "HEADERS_TOO_LARGE")
    many = b"".join(b"X-%d: 1\r\n" % n for n in range(200))
    assert_error(
        await raw_http(app.http_port, b"GET / HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n"),
        431,
        "HEADERS_TOO_LARGE",
    )
    assert [r.levelname for r in warnings_and_worse(caplog)] == ["WARNING"] * 3, caplog.text


async def test_an_undecodable_body_is_a_json_400_and_one_warning(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    head = (
        b"POST /v1/accounts HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 12\r\n\r\n"
    )
    body = assert_error(await raw_http(app.http_port, head + b"not gzip at!"), 400, "MALFORMED_REQUEST")
    assert body["message"] == "malformed request: the body cannot be decoded with its Content-Encoding"
    assert [(r.name, r.levelname) for r in warnings_and_worse(caplog)] == [("tally.http", "WARNING")], (
        caplog.text
    )


async def test_a_bad_chunk_in_a_body_being_read_is_a_json_400(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """The headers first (the handler starts and waits for the body), then a broken chunk: without
    care, aiohttp files the error as a next request and the handler waits until the client leaves."""
    head = (
        b"POST /v1/accounts HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = await raw_http(app.http_port, head, after_continue=b"zz\r\n{}\r\n")
    body = assert_error(answer, 400, "MALFORMED_REQUEST")
    assert body["message"] == "malformed request: the chunked transfer encoding of the body is invalid"
    assert [(r.name, r.levelname) for r in warnings_and_worse(caplog)] == [("tally.http", "WARNING")], (
        caplog.text
    )


async def test_tls_on_the_plain_port_is_answered_without_a_warning(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A scanner or a TLS client on the plain port: aiohttp's judgement, DEBUG, kept."""
    answer = await raw_http(app.http_port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n")
    assert_error(answer, 400, "MALFORMED_REQUEST")
    assert not warnings_and_worse(caplog), caplog.text


# --- 3. the stand-alone gateway: /healthz, /metrics, and a backend that is down -----------------------------


@pytest.fixture
async def gateway(app: App, settings: Settings) -> AsyncIterator[StandaloneGateway]:
    """`tally gateway --target` in front of the app's gRPC port."""
    standalone = StandaloneGateway(settings, f"127.0.0.1:{app.port}", health_ttl=0)
    await standalone.start()
    try:
        yield standalone
    finally:
        await standalone.stop()


async def test_the_standalone_gateway_serves_healthz_and_metrics(
    app: App, gateway: StandaloneGateway
) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    health = await fetch(base, "GET", "/healthz")
    assert (health.status, health.body) == (200, {"status": "SERVING"})
    assert REQUEST_ID.fullmatch(health.headers["x-request-id"])
    admin = {"Authorization": f"Bearer {mint(app)}"}
    created = await fetch(base, "POST", "/v1/accounts", json=ACCOUNT, headers=admin)
    assert created.status == 200 and created.body["id"].startswith("acct_"), created
    assert_error(
        await fetch(base, "GET", "/.well-known/jwks.json"), 404, "ROUTE_NOT_FOUND"
    )  # it holds no keys
    metrics = await fetch(base, "GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'tally_http_requests_total{method="POST",route="/v1/accounts",status="200"} 1.0' in metrics.body
    assert 'tally_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in metrics.body


async def test_a_backend_that_stops_is_503_without_its_address(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = await build(settings, passwords=cheap_passwords())
    await app.start()
    target = f"127.0.0.1:{app.port}"
    standalone = StandaloneGateway(settings, target, health_ttl=0)
    await standalone.start()
    base = f"http://127.0.0.1:{standalone.port}"
    admin = {"Authorization": f"Bearer {mint(app)}"}
    try:
        assert (await fetch(base, "GET", "/v1/accounts", headers=admin)).status == 200
        await app.stop(grace=0)
        answer = await fetch(base, "GET", "/v1/accounts", headers=admin)
        body = assert_error(answer, 503, "SERVICE_UNAVAILABLE")
        assert body["code"] == 14 and body["message"] == "the service is unavailable; retry in a moment"
        assert str(app.port) not in json.dumps(body)
        assert answer.headers["retry-after"] == "1"
        health = await fetch(base, "GET", "/healthz")
        assert (health.status, health.body) == (503, {"status": "NOT_SERVING"})
    finally:
        await standalone.stop()
    # The operator's log has what the caller is not told.
    logged = [r.getMessage() for r in caplog.records if r.name == "tally.gateway"]
    assert any("ListAccounts failed: UNAVAILABLE" in line for line in logged), logged


async def test_a_gateway_with_no_backend_answers_503_json(settings: Settings) -> None:
    standalone = StandaloneGateway(settings, f"127.0.0.1:{free_port()}", health_ttl=0)
    await standalone.start()
    base = f"http://127.0.0.1:{standalone.port}"
    try:
        assert_error(await fetch(base, "POST", "/v1/accounts", json=ACCOUNT), 503, "SERVICE_UNAVAILABLE")
        assert (await fetch(base, "GET", "/healthz")).status == 503
    finally:
        await standalone.stop()


async def test_the_health_answer_is_kept_briefly(app: App) -> None:
    clock = FakeMonotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        health = TargetHealth(channel, ttl=2.0, clock=clock)
        assert await health.check()
        await app.health.set("", NOT_SERVING)
        clock.advance(1.0)
        assert await health.check()  # still the kept answer
        clock.advance(1.5)
        assert not await health.check()
        await app.health.set("", SERVING)
        assert not await health.check()  # kept again, for another 2 s
        clock.advance(2.0)
        checks = await asyncio.gather(*(health.check() for _ in range(5)))
        assert checks == [True] * 5

"""The gateway's limits over real HTTP, on each backend: deep JSON, header values gRPC cannot
carry, forwarded headers past the server's metadata limit, deadlines cut to the configured
maximum, and oversized headers answered without repeating them. Each is refused before a call
is made, with a Status JSON naming the problem, and without a traceback in the log.

Without a network: tests/unit/test_gateway_limits.py.
"""

from __future__ import annotations

import json
import logging

import pytest

from app.server import App, build
from core.settings import Settings
from gateway.app import MAX_FORWARDED_HEADER_BYTES
from gateway.transcoder import MAX_JSON_DEPTH
from tests.integration.test_gateway_edge import ACCOUNT, Answer, assert_error, fetch, raw_http
from tests.support import cheap_passwords, mint


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def raw(port: int, head: bytes, body: bytes = b"") -> Answer:
    """One request as bytes (aiohttp's client refuses to send a TAB or non-ASCII in a header)."""
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    request = head + b"Host: tally\r\nConnection: close\r\n" + length + b"\r\n" + body
    return await raw_http(port, request)


async def test_deep_json_is_400_and_nothing_is_created(app: App, caplog: pytest.LogCaptureFixture) -> None:
    base = f"http://127.0.0.1:{app.http_port}"
    admin = {"Authorization": f"Bearer {mint(app)}", "Content-Type": "application/json"}
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        deep = "[" * depth + "]" * depth
        body = json.dumps(ACCOUNT)[:-1] + f', "metadata": {deep}}}'
        answer = await fetch(base, "POST", "/v1/accounts", data=body, headers=admin)
        error = assert_error(answer, 400, "JSON_TOO_DEEP")
        assert error["details"][1]["fieldViolations"][0]["field"] == "body"
    listed = await fetch(base, "GET", "/v1/accounts", headers=admin)
    assert listed.status == 200 and listed.body == {}
    assert tracebacks(caplog) == [], caplog.text


@pytest.mark.parametrize(
    "header",
    [b"Authorization: Bearer a\tb", b"Authorization: Bearer caf\xc3\xa9", b"Grpc-Metadata-x-note: a\xffb"],
)
async def test_a_header_grpc_cannot_carry_is_400_naming_it(
    app: App, header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await raw(app.http_port, b"GET /v1/accounts HTTP/1.1\r\n" + header + b"\r\n")
    error = assert_error(answer, 400, "INVALID_HEADER")
    name = header.split(b":")[0].decode()
    assert error["details"][1]["fieldViolations"][0]["field"] == name
    value = header.split(b": ", 1)[1].decode("utf-8", "replace")
    assert value not in json.dumps(error, ensure_ascii=False) and value not in caplog.text
    assert tracebacks(caplog) == [], caplog.text


async def test_forwarded_headers_past_the_limit_are_431_not_429(app: App) -> None:
    each = 7000
    lines = b"".join(
        b"Grpc-Metadata-k%d: %s\r\n" % (n, b"v" * each) for n in range(MAX_FORWARDED_HEADER_BYTES // each + 1)
    )
    answer = await raw(app.http_port, b"GET /v1/accounts HTTP/1.1\r\n" + lines)
    assert_error(answer, 431, "HEADERS_TOO_LARGE")


async def test_an_oversized_authorization_is_431_and_repeated_nowhere(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = b"SECRETTOKEN" + b"s" * 9000
    head = b"GET /v1/accounts HTTP/1.1\r\nAuthorization: Bearer " + secret + b"\r\n"
    answer = await raw(app.http_port, head)
    error = assert_error(answer, 431, "HEADERS_TOO_LARGE")
    assert "SECRET" not in json.dumps(error) and "sss" not in json.dumps(error)
    assert "SECRET" not in caplog.text and "sss" not in caplog.text, caplog.text


async def test_a_huge_grpc_timeout_is_cut_to_the_maximum_not_an_immediate_504(app: App) -> None:
    base = f"http://127.0.0.1:{app.http_port}"
    admin = {"Authorization": f"Bearer {mint(app)}"}
    longest = ({"Grpc-Timeout": "99999999H"}, {"Grpc-Timeout": "99999999S"}, {"Request-Timeout": "9" * 9})
    for header in longest:
        answer = await fetch(base, "GET", "/v1/accounts", headers={**admin, **header})
        assert answer.status == 200, (header, answer)
    bad = await fetch(base, "GET", "/v1/accounts", headers={**admin, "Grpc-Timeout": "123456789H"})
    assert assert_error(bad, 400, "INVALID_ARGUMENT")["details"][1]["fieldViolations"][0]["field"] == (
        "Grpc-Timeout"
    )


async def test_the_configured_maximum_bounds_every_deadline(settings: Settings) -> None:
    # A microsecond: no call can finish within it, so a 504 proves the cut applies.
    tight = settings.model_copy(update={"gateway_max_timeout_seconds": 1e-6})
    application = await build(tight, passwords=cheap_passwords())
    await application.start()
    try:
        base = f"http://127.0.0.1:{application.http_port}"
        admin = {"Authorization": f"Bearer {mint(application)}"}
        answer = await fetch(base, "GET", "/v1/accounts", headers={**admin, "Grpc-Timeout": "99999999H"})
        assert_error(answer, 504, "DEADLINE_EXCEEDED")
        unbounded = await fetch(base, "GET", "/v1/accounts", headers=admin)
        assert unbounded.status == 200, unbounded  # no header: no deadline to cut
    finally:
        await application.stop(grace=0)

"""The gateway's limits on what a caller sends, without a network: JSON depth, header values
passed on as gRPC metadata, deadlines, and how much of a caller's value an error repeats.

Over real HTTP: tests/integration/test_gateway_limits.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2
from multidict import CIMultiDict

from app.modules import SERVICES
from core.status import make_status
from gateway.app import (
    DEFAULT_MAX_TIMEOUT_SECONDS,
    MAX_FORWARDED_HEADER_BYTES,
    idempotency_key,
    parse_timeout,
    request_metadata,
)
from gateway.errors import GatewayError, caller_http_status, status_from_rpc_error
from gateway.routes import RouteTable
from gateway.transcoder import (
    MAX_JSON_DEPTH,
    build_request,
    build_stream_requests,
    decode_json,
    json_depth_exceeds,
    parse_query,
)

TABLE = RouteTable.from_services(SERVICES)


def nested(depth: int) -> bytes:
    """A JSON value with `depth` arrays and objects, one inside the other."""
    half = depth // 2
    return b'{"a":' * half + b"[" * (depth - half) + b"]" * (depth - half) + b"}" * half


def refused(call: Any, *args: Any, **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args, **kwargs)
    return caught.value


# --- JSON depth --------------------------------------------------------------------------------


def test_nesting_up_to_the_limit_parses_and_one_more_is_refused() -> None:
    assert decode_json(nested(MAX_JSON_DEPTH)) is not None
    error = refused(decode_json, nested(MAX_JSON_DEPTH + 1))
    assert (error.http, error.reason, error.violations[0][0]) == (400, "JSON_TOO_DEEP", "body")
    assert str(MAX_JSON_DEPTH) in error.message


def test_nesting_far_past_the_recursion_limit_is_refused_not_a_recursion_error() -> None:
    for body in (b"[" * 200_000, b'{"a":' * 100_000, nested(100_000)):
        assert refused(decode_json, body).reason == "JSON_TOO_DEEP"


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = b"[" * 500
    body = b'{"displayName": "' + text + b'", "email": "a\\"[[[[\\\\"}'
    assert not json_depth_exceeds(body)
    assert decode_json(body)["displayName"] == text.decode()
    # Many brackets side by side are not deep either.
    assert not json_depth_exceeds(b"[" + b"[]," * 10_000 + b"[]]")


def test_a_deep_line_of_a_stream_body_is_refused_naming_it() -> None:
    route, variables = TABLE.lookup("POST", "/v1/accounts")
    route = dataclasses.replace(route, client_streaming=True)
    body = b'{"account": {}}\n' + nested(MAX_JSON_DEPTH + 1)
    error = refused(build_stream_requests, route, variables, [], body)
    assert (error.reason, error.violations[0][0]) == ("JSON_TOO_DEEP", "line 2")


# --- header values passed on as metadata ---------------------------------------------------------


@pytest.mark.parametrize("header", ["Authorization", "traceparent", "Grpc-Metadata-x-note"])
@pytest.mark.parametrize("value", ["Bearer a\tb", "caf\u00e9", "a\x7fb", "a\udcffb", "a\x01"])
def test_a_value_grpc_cannot_carry_is_refused_naming_the_header(header: str, value: str) -> None:
    error = refused(request_metadata, CIMultiDict({header: value}), "req-1")
    assert (error.http, error.reason) == (400, "INVALID_HEADER")
    assert error.violations[0][0] == header
    assert value not in error.message and value not in error.violations[0][1]


def test_printable_ascii_passes_as_it_is() -> None:
    headers = CIMultiDict({"Authorization": "Bearer a.b-c_d~ e", "Grpc-Metadata-x-note": "~ !"})
    metadata = request_metadata(headers, "req-1")
    assert ("authorization", "Bearer a.b-c_d~ e") in metadata
    assert ("x-note", "~ !") in metadata


def test_forwarded_headers_past_the_limit_are_431() -> None:
    each = 4000
    count = MAX_FORWARDED_HEADER_BYTES // each + 1
    headers = CIMultiDict({f"Grpc-Metadata-k{n}": "x" * each for n in range(count)})
    error = refused(request_metadata, headers, "req-1")
    assert (error.http, error.reason) == (431, "HEADERS_TOO_LARGE")
    assert "x" * 100 not in error.message
    fewer = CIMultiDict({f"Grpc-Metadata-k{n}": "x" * each for n in range(count - 1)})
    assert len(request_metadata(fewer, "req-1")) == count  # and x-request-id


def test_a_long_bad_metadata_name_is_not_repeated_whole() -> None:
    name = "Grpc-Metadata-grpc-" + "q" * 5000  # grpc-* names are gRPC's own
    error = refused(request_metadata, CIMultiDict({name: "v"}), "req-1")
    assert len(error.message) < 200 and len(error.violations[0][0]) <= 103


# --- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5S", 5.0), ("200m", 0.2), ("1H", 3600.0), ("2M", 120.0), ("7u", 7e-6), ("9n", 9e-9), ("0S", 0.0)],
)
def test_grpc_timeout_in_the_spec_form(value: str, seconds: float) -> None:
    assert parse_timeout({"Grpc-Timeout": value}, 86_400) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["99999999H", "99999999M", "301S", "12345678S"])
def test_a_long_grpc_timeout_is_cut_to_the_maximum(value: str) -> None:
    assert parse_timeout({"Grpc-Timeout": value}) == DEFAULT_MAX_TIMEOUT_SECONDS
    assert parse_timeout({"Grpc-Timeout": value}, 30.0) == 30.0


@pytest.mark.parametrize(
    "value", ["", "5", "S", "123456789S", "5s", "1.5S", "-5S", "5 S", "\u0665S", "5SS", "0x5S", "5S\t"]
)
def test_a_grpc_timeout_off_the_spec_is_400_naming_it(value: str) -> None:
    error = refused(parse_timeout, {"Grpc-Timeout": value})
    assert (error.http, error.violations[0][0]) == (400, "Grpc-Timeout")


def test_request_timeout_in_seconds_cut_to_the_maximum() -> None:
    assert parse_timeout({"Request-Timeout": "2.5"}) == 2.5
    assert parse_timeout({"Request-Timeout": "999999999"}) == DEFAULT_MAX_TIMEOUT_SECONDS
    assert parse_timeout({"Request-Timeout": "60"}, 10.0) == 10.0
    assert parse_timeout({}) is None


@pytest.mark.parametrize("value", ["0", "0.0", "-1", "nan", "inf", "1e3", "1_0", " ", "\u0665", "1.5.2"])
def test_a_bad_request_timeout_is_400_naming_it(value: str) -> None:
    error = refused(parse_timeout, {"Request-Timeout": value})
    assert (error.http, error.violations[0][0]) == (400, "Request-Timeout")


# --- errors repeat only a short prefix of a caller's value -----------------------------------------


def test_no_route_repeats_only_the_start_of_the_path() -> None:
    error = refused(TABLE.lookup, "GET", "/v1/" + "p" * 5000)
    assert error.reason == "ROUTE_NOT_FOUND" and len(error.message) < 100


def test_a_path_that_is_not_utf8_is_refused_without_repeating_it() -> None:
    error = refused(TABLE.lookup, "GET", "/v1/accounts/" + "%FF" * 2000)
    assert error.http == 400 and "%FF" not in error.message


def test_a_path_conflict_repeats_only_the_start_of_each_value() -> None:
    route, variables = TABLE.lookup("PATCH", "/v1/accounts/acct_1")
    body = b'{"id": "' + b"z" * 100_000 + b'"}'
    error = refused(build_request, route, variables, [], body)
    assert error.reason == "PATH_CONFLICT" and len(error.message) < 200


def test_unknown_fields_are_named_by_a_short_prefix_and_only_the_first_few() -> None:
    route, variables = TABLE.lookup("POST", "/v1/accounts")
    keys = ", ".join(f'"{"k" * 1000}{n}": 1' for n in range(50))
    error = refused(build_request, route, variables, [], ("{" + keys + "}").encode())
    assert error.reason == "UNKNOWN_FIELD"
    assert len(error.message) < 1500 and len(error.violations) == 10
    assert all(len(name) <= 110 for name, _ in error.violations)


def test_a_lone_surrogate_is_said_as_such() -> None:
    route, variables = TABLE.lookup("POST", "/v1/accounts")
    error = refused(build_request, route, variables, [], b'{"displayName": "\\ud800"}')
    assert error.violations[0] == ("account.display_name", error.violations[0][1])
    assert "surrogate" in error.violations[0][1]


# --- the query string and the idempotency key ------------------------------------------------------


def test_the_query_is_decoded_as_a_url_library_would() -> None:
    pairs = [("a", "A"), ("b", "1 2"), ("c", "+"), ("d", ""), ("e", "")]
    assert parse_query("a=%41&b=1+2&c=%2B&&d=&e") == pairs


@pytest.mark.parametrize(
    ("raw", "field"), [("filter=%FF", "filter"), ("x=1&id=%ED%A0%80", "id"), ("%C3=1", "query")]
)
def test_a_query_that_is_not_utf8_is_refused_naming_the_parameter(raw: str, field: str) -> None:
    error = refused(parse_query, raw)
    assert (error.http, error.violations[0][0]) == (400, field)


def test_an_idempotency_key_grpc_cannot_carry_is_refused_naming_it() -> None:
    assert idempotency_key(CIMultiDict({"Idempotency-Key": "k-1", "X-Request-Id": "r"}), "r") == "k-1"
    assert idempotency_key(CIMultiDict({"X-Request-Id": "r-1"}), "r-1") == "r-1"
    # An X-Request-Id the server replaced (not sane) is no idempotency key of the caller's.
    assert idempotency_key(CIMultiDict({"X-Request-Id": "r-1"}), "0f3c") is None
    assert idempotency_key(CIMultiDict(), "0f3c") is None
    for name in ("Idempotency-Key", "X-Request-Id"):
        error = refused(idempotency_key, CIMultiDict({name: "k\udcff"}), "k\udcff")
        assert (error.reason, error.violations[0][0]) == ("INVALID_HEADER", name)


def test_a_size_limit_in_transport_is_413_and_the_rate_limiter_429() -> None:
    def failed(*trailers: tuple[str, str | bytes]) -> grpc.aio.AioRpcError:
        code, nothing = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata()
        return grpc.aio.AioRpcError(code, nothing, grpc.aio.Metadata(*trailers), details="slow down")

    limited = make_status(code_pb2.RESOURCE_EXHAUSTED, "slow down", reason="RATE_LIMITED")
    from_server = failed(("grpc-status-details-bin", limited.SerializeToString()))
    assert caller_http_status(from_server, status_from_rpc_error(from_server)) == 429
    in_transport = failed()
    assert caller_http_status(in_transport, status_from_rpc_error(in_transport)) == 413

"""The gateway's errors without a network: gRPC status to HTTP, the Status JSON body and its
headers, what a caller is told of a call that failed in transport, and aiohttp's own errors."""

from __future__ import annotations

import json

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import (
    GatewayError,
    error_headers,
    failed_in_transport,
    http_status,
    status_from_rpc_error,
    status_json,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.CANCELLED, 499),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_status_to_http(code: grpc.StatusCode, expected: int) -> None:
    assert http_status(code) == expected
    assert http_status(code.value[0]) == expected
    assert http_status(99) == 500


def test_error_body_shape_and_headers() -> None:
    status = GatewayError.invalid("page_size", "must be positive").status()
    assert status_json(status) == {
        "code": 3,
        "message": "page_size: must be positive",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "INVALID_ARGUMENT",
                "domain": "tally",
            },
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "page_size", "description": "must be positive"}],
            },
        ],
    }
    retry = status_pb2.Status(code=8, message="slow down")
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(1200)
    retry.details.add().Pack(info)
    assert error_headers(retry, had_credentials=True) == {"Retry-After": "2"}
    unauthenticated = status_pb2.Status(code=16, message="no token")
    assert error_headers(unauthenticated, had_credentials=False) == {"WWW-Authenticate": "Bearer"}
    assert status_json(status_pb2.Status(code=5)) == {"code": 5, "message": "", "details": []}


def _rpc_error(
    code: grpc.StatusCode, details: str, status: status_pb2.Status | None = None
) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if status is not None:
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


def test_a_call_that_failed_in_transport_is_told_in_our_words() -> None:
    down = _rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.20.30.40:50051: Connection refused",
    )
    assert failed_in_transport(down)
    status = status_from_rpc_error(down)
    body = status_json(status)
    assert body["code"] == 14 and "10.20.30.40" not in json.dumps(body)
    assert body["message"] == "the service is unavailable; retry in a moment"
    assert body["details"][0]["reason"] == "SERVICE_UNAVAILABLE" and body["details"][0]["domain"] == "tally"
    assert error_headers(status, had_credentials=False) == {"Retry-After": "1"}

    crashed = status_from_rpc_error(_rpc_error(grpc.StatusCode.UNKNOWN, "Unexpected <class 'KeyError'>: 'x'"))
    assert (crashed.code, crashed.message) == (13, "internal error")
    late = status_from_rpc_error(_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert status_json(late)["details"][0]["reason"] == "DEADLINE_EXCEEDED"


def test_a_server_status_passes_and_gets_an_error_info_when_it_has_none() -> None:
    bare = _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "upto must not be negative")
    assert not failed_in_transport(bare)
    assert status_json(status_from_rpc_error(bare)) == {
        "code": 3,
        "message": "upto must not be negative",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "INVALID_ARGUMENT",
                "domain": "tally",
            }
        ],
    }
    sent = GatewayError(
        grpc.StatusCode.UNAVAILABLE, "the database is down", reason="DATABASE_UNAVAILABLE"
    ).status()
    from_server = _rpc_error(grpc.StatusCode.UNAVAILABLE, "the database is down", sent)
    assert not failed_in_transport(from_server)
    assert status_from_rpc_error(from_server) == sent


def test_aiohttp_errors_become_gateway_errors() -> None:
    from aiohttp import web

    not_allowed = GatewayError.from_http_exception(
        web.HTTPMethodNotAllowed("PUT", ["GET"]), "PUT", "/metrics"
    )
    assert (not_allowed.http, not_allowed.reason, not_allowed.headers) == (
        405,
        "METHOD_NOT_ALLOWED",
        {"Allow": "GET"},
    )
    too_large = GatewayError.from_http_exception(web.HTTPRequestEntityTooLarge(10, 20), "POST", "/x")
    assert (too_large.http, too_large.reason) == (413, "BODY_TOO_LARGE")
    media = GatewayError.from_http_exception(web.HTTPUnsupportedMediaType(), "POST", "/x")
    assert (media.http, media.code, media.reason) == (
        415,
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    broken = GatewayError.from_http_exception(web.HTTPBadGateway(), "GET", "/x")
    assert (broken.http, broken.reason, broken.message) == (502, "INTERNAL", "internal error")

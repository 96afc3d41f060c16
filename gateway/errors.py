"""gRPC status to HTTP: the google.rpc.Status JSON body, error headers, and gateway-made errors.

The code-to-HTTP table is core.status's, shared with the gRPC error mapping and the CLI.

Every error answer of the HTTP port, whether the gRPC server's or one made before any
call (no route, wrong method, unreadable request, body too large, headers too large, a
request that is not HTTP), has the same body: the google.rpc.Status as JSON with an
ErrorInfo (domain `tally`), e.g.
`{"code": 5, "message": "...", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", ...}]}`.

A call that failed in transport (the server is down, the deadline passed) carries no
Status from the server, only the gRPC library's text, which names internal addresses;
the caller gets words of ours instead (`status_from_rpc_error`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import duration_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from core.errors import FieldViolation
from core.status import code_name, internal_status, make_status, pack
from core.status import http_status as http_status_of_number

# Said for a call that failed without a Status from the server: (reason, message) by code.
# UNKNOWN, INTERNAL and DATA_LOSS without a Status are core.status.internal_status().
_TRANSPORT_FAILURES: Mapping[int, tuple[str, str]] = {
    code_pb2.UNAVAILABLE: ("SERVICE_UNAVAILABLE", "the service is unavailable; retry in a moment"),
    code_pb2.DEADLINE_EXCEEDED: ("DEADLINE_EXCEEDED", "the call did not finish before its deadline"),
    code_pb2.CANCELLED: ("CANCELLED", "the call was cancelled before it finished"),
    code_pb2.UNIMPLEMENTED: ("METHOD_NOT_IMPLEMENTED", "the service does not implement this method"),
    code_pb2.RESOURCE_EXHAUSTED: (
        "MESSAGE_TOO_LARGE",
        "the request or its answer is larger than the service accepts",
    ),
}
_INTERNAL_CODES = frozenset({code_pb2.UNKNOWN, code_pb2.INTERNAL, code_pb2.DATA_LOSS})
UNAVAILABLE_RETRY_SECONDS = 1
ECHO_LIMIT = 40
# Field paths come from descriptors and are short; a longer "field" is a caller's query key or header.
FIELD_NAME_LIMIT = 100


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """A caller's text cut to a short prefix for a message: it may be a megabyte or a credential,
    and a message travels in trailers with a size limit and into logs."""
    return text if len(text) <= limit else text[:limit] + "..."


def echo(value: str, limit: int = ECHO_LIMIT) -> str:
    """A caller's value quoted and cut (`cut`) for a message."""
    return repr(cut(value, limit))


def http_status(code: grpc.StatusCode | int) -> int:
    """The HTTP status for a gRPC status code (a grpc.StatusCode or its number); unknown ones are 500."""
    return http_status_of_number(code.value[0] if isinstance(code, grpc.StatusCode) else code)


class GatewayError(Exception):
    """An error the gateway answers itself, before or instead of calling the gRPC server."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str,
        http: int | None = None,
        violations: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.http = http if http is not None else http_status(code)
        self.violations = list(violations)
        self.headers = dict(headers or {})

    def status(self) -> status_pb2.Status:
        return make_status(
            self.code.value[0],
            self.message,
            reason=self.reason,
            violations=[FieldViolation(field, description) for field, description in self.violations],
        )

    @classmethod
    def invalid(cls, field: str, description: str, *, reason: str = "INVALID_ARGUMENT") -> GatewayError:
        """400 INVALID_ARGUMENT with one BadRequest field violation."""
        field = cut(field, FIELD_NAME_LIMIT)
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: {description}",
            reason=reason,
            violations=[(field, description)],
        )

    @classmethod
    def route_not_found(cls, http_method: str, path: str) -> GatewayError:
        message = f"no route for {cut(http_method)} {cut(path)}"
        return cls(grpc.StatusCode.NOT_FOUND, message, reason="ROUTE_NOT_FOUND")

    @classmethod
    def method_not_allowed(cls, http_method: str, allowed: Sequence[str]) -> GatewayError:
        return cls(
            grpc.StatusCode.UNIMPLEMENTED,
            f"method {cut(http_method)} is not allowed here; allowed: {', '.join(allowed)}",
            reason="METHOD_NOT_ALLOWED",
            http=405,
            headers={"Allow": ", ".join(allowed)},
        )

    @classmethod
    def body_too_large(cls, limit: int | None = None) -> GatewayError:
        larger = f"larger than {limit} bytes" if limit is not None else "too large"
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request body is {larger}",
            reason="BODY_TOO_LARGE",
            http=413,
        )

    @classmethod
    def malformed(cls, what: str) -> GatewayError:
        """400 for a request that is not well-formed HTTP; `what` says which part, in our words."""
        return cls(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {what}", reason="MALFORMED_REQUEST")

    @classmethod
    def deadline(cls) -> GatewayError:
        return cls(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the request did not finish in time",
            reason="DEADLINE_EXCEEDED",
        )

    @classmethod
    def headers_too_large(cls, max_request_line: int, max_header: int, max_headers: int) -> GatewayError:
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request line is longer than {max_request_line} bytes, a header longer than "
            f"{max_header} bytes, or there are more than {max_headers} headers",
            reason="HEADERS_TOO_LARGE",
            http=431,
        )

    @classmethod
    def forwarded_headers_too_large(cls, limit: int) -> GatewayError:
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the headers passed on to the service (Authorization, traceparent, tracestate, "
            f"Grpc-Metadata-*) total more than {limit} bytes",
            reason="HEADERS_TOO_LARGE",
            http=431,
        )

    @classmethod
    def from_http_exception(cls, error: web.HTTPException, method: str, path: str) -> GatewayError:
        """aiohttp's own 4xx/5xx (the router's 404 and 405, a 413 from reading a body, ...)."""
        if isinstance(error, web.HTTPMethodNotAllowed):
            return cls.method_not_allowed(method, sorted(error.allowed_methods))
        if error.status == 404:
            return cls.route_not_found(method, path)
        if error.status == 413:
            return cls.body_too_large()
        if error.status >= 500:
            return cls(grpc.StatusCode.INTERNAL, "internal error", reason="INTERNAL", http=error.status)
        phrase = _phrase(error.status)
        reason = re.sub(r"[^A-Z0-9]+", "_", phrase.upper()).strip("_")
        return cls(grpc.StatusCode.INVALID_ARGUMENT, phrase.lower(), reason=reason, http=error.status)

    def response(self, request_id: str, headers: Mapping[str, str] | None = None) -> web.Response:
        """This error as the HTTP answer: Status JSON, its HTTP status, `X-Request-Id` and its own headers."""
        return error_response(
            self.status(), self.http, {**(headers or {}), **self.headers, "X-Request-Id": request_id}
        )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Bad Request" if status < 500 else "Internal Server Error"


def error_response(
    status: status_pb2.Status, http: int, headers: Mapping[str, str], *, use_proto_names: bool = False
) -> web.Response:
    """The Status as an `application/json` answer with HTTP status `http`."""
    text = json.dumps(
        status_json(status, use_proto_names=use_proto_names), ensure_ascii=False, separators=(",", ":")
    )
    return web.Response(text=text, status=http, content_type="application/json", headers=headers)


def server_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status the server sent (`grpc-status-details-bin`), or None."""
    try:
        return rpc_status.from_call(error)
    except ValueError:  # details that disagree with the code or message
        return None


def failed_in_transport(error: grpc.aio.AioRpcError) -> bool:
    """True when the caller is not shown the call's own message (see `status_from_rpc_error`)."""
    code = error.code().value[0]
    return server_status(error) is None and (code in _TRANSPORT_FAILURES or code in _INTERNAL_CODES)


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """What the caller is told of a failed call, always with an ErrorInfo.

    The server's google.rpc.Status when it sent one. Else, for the codes the gRPC library
    itself produces (UNAVAILABLE, DEADLINE_EXCEEDED, ... and UNKNOWN/INTERNAL, whose text may
    be a Python exception), a message of ours; other codes keep the server's message.
    """
    code = error.code().value[0]
    status = server_status(error)
    if status is None:
        if code in _INTERNAL_CODES:
            return internal_status()
        if code in _TRANSPORT_FAILURES:
            return transport_status(code)
        status = status_pb2.Status(code=code, message=error.details() or "")
    return with_error_info(status)


def caller_http_status(error: grpc.aio.AioRpcError, status: status_pb2.Status) -> int:
    """The HTTP status for the caller of a failed call: the code's, except that RESOURCE_EXHAUSTED
    without a Status from the server is a message or its headers past a size limit, 413, not the
    rate limiter's 429 (which sends a Status), whose `Retry-After` invites the same call again."""
    if status.code == code_pb2.RESOURCE_EXHAUSTED and server_status(error) is None:
        return 413
    return http_status(status.code)


def transport_status(code: int) -> status_pb2.Status:
    """The Status for a call that failed in transport with `code`; UNAVAILABLE says when to retry."""
    reason, message = _TRANSPORT_FAILURES[code]
    status = make_status(code, message, reason=reason)
    if code == code_pb2.UNAVAILABLE:
        delay = duration_pb2.Duration(seconds=UNAVAILABLE_RETRY_SECONDS)
        status.details.append(pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def with_error_info(status: status_pb2.Status) -> status_pb2.Status:
    """`status` with an ErrorInfo (reason: the code's name) added when it has none."""
    if any(detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) for detail in status.details):
        return status
    filled = make_status(status.code, status.message, reason=code_name(status.code))
    filled.details.extend(status.details)
    return filled


def status_json(status: status_pb2.Status, *, use_proto_names: bool = False) -> dict[str, Any]:
    """The Status as JSON; `code` and `message` always present, details decoded where the type is known."""
    try:
        body = json_format.MessageToDict(status, preserving_proto_field_name=use_proto_names)
    except (json_format.Error, TypeError, KeyError):  # an Any of a type this process does not know
        body = {"details": [{"@type": d.type_url, "value": d.value.hex()} for d in status.details]}
    body["code"] = status.code
    body["message"] = status.message
    body.setdefault("details", [])
    return {"code": body.pop("code"), "message": body.pop("message"), **body}


def error_headers(status: status_pb2.Status, *, had_credentials: bool) -> dict[str, str]:
    """`Retry-After` from RetryInfo (429, 503), `WWW-Authenticate` on 401."""
    headers: dict[str, str] = {}
    if status.code == code_pb2.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if had_credentials else "Bearer"
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            headers["Retry-After"] = str(max(0, math.ceil(delay)))
    return headers

"""gRPC status to HTTP: the google.rpc.Status JSON body, error headers, and gateway-made errors.

The code-to-HTTP table is core.status's, shared with the gRPC error mapping and the CLI.

Every error answer, whether the gRPC server's or the gateway's own (no route,
wrong method, unreadable request, body too large), has the same body: the
google.rpc.Status as JSON, details included, e.g.
`{"code": 5, "message": "...", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", ...}]}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from core.errors import FieldViolation
from core.status import http_status as http_status_of_number
from core.status import make_status


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
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: {description}",
            reason=reason,
            violations=[(field, description)],
        )

    @classmethod
    def route_not_found(cls, http_method: str, path: str) -> GatewayError:
        return cls(grpc.StatusCode.NOT_FOUND, f"no route for {http_method} {path}", reason="ROUTE_NOT_FOUND")

    @classmethod
    def method_not_allowed(cls, http_method: str, allowed: Sequence[str]) -> GatewayError:
        return cls(
            grpc.StatusCode.UNIMPLEMENTED,
            f"method {http_method} is not allowed here; allowed: {', '.join(allowed)}",
            reason="METHOD_NOT_ALLOWED",
            http=405,
            headers={"Allow": ", ".join(allowed)},
        )

    @classmethod
    def body_too_large(cls, limit: int) -> GatewayError:
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request body is larger than {limit} bytes",
            reason="BODY_TOO_LARGE",
            http=413,
        )


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status of a failed call: from `grpc-status-details-bin`, else code and message."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that disagree with the code or message
        status = None
    if status is None:
        status = status_pb2.Status(code=error.code().value[0], message=error.details() or "")
    return status


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
    """`Retry-After` from RetryInfo on 429, `WWW-Authenticate` on 401."""
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

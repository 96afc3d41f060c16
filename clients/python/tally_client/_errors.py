"""Typed errors, decoded from the google.rpc.Status the server sends with every failure.

The server puts the whole status (code, message, ErrorInfo, BadRequest, RetryInfo) in the
`grpc-status-details-bin` trailer; a batch result carries the same Status as a field. Both
decode here into one hierarchy, one class per status code the caller may want to catch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (such as `account.email`) and what is wrong with it."""

    field: str
    description: str


class TallyError(Exception):
    """A call failed: the gRPC status code, its message and the details the server attached."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message
        # ErrorInfo: an UPPER_SNAKE reason, stable enough to branch on.
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = field_violations
        # RetryInfo: seconds the server asks the caller to wait before trying again.
        self.retry_delay = retry_delay


class InvalidArgument(TallyError):
    pass


class NotFound(TallyError):
    pass


class AlreadyExists(TallyError):
    pass


class PermissionDenied(TallyError):
    pass


class Unauthenticated(TallyError):
    pass


class ResourceExhausted(TallyError):
    pass


class FailedPrecondition(TallyError):
    pass


class Aborted(TallyError):
    pass


class Unavailable(TallyError):
    pass


class DeadlineExceeded(TallyError):
    pass


_CLASSES: dict[grpc.StatusCode, type[TallyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (UNKNOWN for a number gRPC does not know)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_from_status(status: status_pb2.Status) -> TallyError:
    """The typed error of a google.rpc.Status (a trailer's, or a batch item's `error`)."""
    code = status_code(status.code)
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return _CLASSES.get(code, TallyError)(
        code,
        status.message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_delay=retry_delay,
    )


def _details_trailer(trailers: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def error_from_rpc(error: grpc.RpcError) -> TallyError:
    """The typed error of a failed call (sync or asyncio), its details read from the trailer.

    A status without the trailer (one the transport made up: UNAVAILABLE on a refused
    connection, DEADLINE_EXCEEDED on the client's own deadline) keeps its code and message.
    """
    code: grpc.StatusCode = error.code()  # grpc.Call's methods: every failed call's RpcError has them
    message: str = error.details() or ""
    raw = _details_trailer(error.trailing_metadata())
    if raw is not None:
        status = status_pb2.Status()
        try:
            status.ParseFromString(raw)
        except Exception:  # garbage in a trailer must not hide the call's own status
            status = status_pb2.Status()
        else:
            if status.code == code.value[0]:
                return error_from_status(status)
    return error_from_status(status_pb2.Status(code=code.value[0] or code_pb2.UNKNOWN, message=message))

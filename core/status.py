"""The one status translator: core.errors exceptions to google.rpc.Status, and status codes to HTTP.

The gRPC error mapping (interceptors.errors) answers calls with these statuses, the REST
gateway answers with the HTTP status of their code, and the CLI names the code and picks its
exit status from it. A `google.rpc.Status` is a plain protobuf message, not gRPC transport,
so it belongs here; turning it into a gRPC trailer is the interceptor's job.

Each status carries an ErrorInfo (reason, domain "tally", metadata); bad input adds a
BadRequest naming every field, rate limits a RetryInfo and a QuotaFailure (AIP-193).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from core import errors

DOMAIN = "tally"

# Most specific first: the first class the error is an instance of decides.
_CODES: tuple[tuple[type[errors.TallyError], int], ...] = (
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.Aborted, code_pb2.ABORTED),
    (errors.Unavailable, code_pb2.UNAVAILABLE),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
)

# gRPC code to HTTP status, as google.rpc.Code documents it (CANCELLED: nginx's 499), except
# FAILED_PRECONDITION, which is 409 here, not 400: it refuses a well-formed request because of the
# state it meets (an account not deleted, a request_id used for another request), and HTTP says
# that with 409 Conflict. 400 stays for requests that are wrong as sent, so a request the OpenAPI
# document allows is never 400.
HTTP_STATUS: Mapping[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 409,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}


def code_of(error: errors.TallyError) -> int:
    """The google.rpc.Code number of a Tally error (UNKNOWN for a class not in the table)."""
    return next((code for kind, code in _CODES if isinstance(error, kind)), code_pb2.UNKNOWN)


def code_name(code: int) -> str:
    """'NOT_FOUND' for 5; 'UNKNOWN' for a number google.rpc.Code does not define."""
    return str(code_pb2.Code.Name(code)) if code in HTTP_STATUS else "UNKNOWN"


def http_status(code: int) -> int:
    """The HTTP status for a gRPC status code number; codes outside the table are 500."""
    return HTTP_STATUS.get(code, 500)


def describe(error: errors.TallyError) -> str:
    """One line for an operator: 'ALREADY_EXISTS (EMAIL_TAKEN): a user with ... exists'."""
    return f"{code_name(code_of(error))} ({error.reason}): {error.message}"


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def make_status(
    code: int,
    message: str,
    *,
    reason: str,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[errors.FieldViolation] = (),
) -> status_pb2.Status:
    """A Status with its ErrorInfo and, when fields are named, a BadRequest listing them."""
    details = [pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))]
    if violations:
        field_violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ]
        details.append(pack(error_details_pb2.BadRequest(field_violations=field_violations)))
    return status_pb2.Status(code=code, message=message, details=details)


def to_status(error: errors.TallyError) -> status_pb2.Status:
    """The google.rpc.Status a caller receives for a Tally error."""
    violations = error.violations if isinstance(error, errors.InvalidArgument) else ()
    status = make_status(
        code_of(error), error.message, reason=error.reason, metadata=error.metadata, violations=violations
    )
    if isinstance(error, errors.ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, math.ceil(error.retry_after * 1e9)))
        status.details.append(pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        if error.subject:
            violation = error_details_pb2.QuotaFailure.Violation(
                subject=error.subject, description=error.limit_description
            )
            status.details.append(pack(error_details_pb2.QuotaFailure(violations=[violation])))
    return status


def internal_status() -> status_pb2.Status:
    """What a caller sees of an unexpected failure: no message, trace or SQL of its own."""
    return make_status(code_pb2.INTERNAL, "internal error", reason="INTERNAL")

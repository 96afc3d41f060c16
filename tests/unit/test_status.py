"""The one status translator (core.status) and the CLI's use of it: errors by type, never by text."""

from __future__ import annotations

from typing import Any

import pytest
from google.rpc import code_pb2, error_details_pb2

from app.cli import _failure
from core import errors, status
from core.settings import ListenError, Settings


def details(message: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for detail in message.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(kind.DESCRIPTOR):
                unpacked = kind()
                detail.Unpack(unpacked)
                found[kind.__name__] = unpacked
    return found


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (errors.InvalidArgument.field("account.email", "bad"), code_pb2.INVALID_ARGUMENT, 400),
        (errors.NotFound("no"), code_pb2.NOT_FOUND, 404),
        (errors.AlreadyExists("dup"), code_pb2.ALREADY_EXISTS, 409),
        (errors.FailedPrecondition("state"), code_pb2.FAILED_PRECONDITION, 409),
        (errors.Aborted("etag"), code_pb2.ABORTED, 409),
        (errors.Unavailable("down"), code_pb2.UNAVAILABLE, 503),
        (errors.Unauthenticated("who"), code_pb2.UNAUTHENTICATED, 401),
        (errors.PermissionDenied("no"), code_pb2.PERMISSION_DENIED, 403),
        (errors.ResourceExhausted("slow", retry_after=1.5), code_pb2.RESOURCE_EXHAUSTED, 429),
        (errors.TallyError("other"), code_pb2.UNKNOWN, 500),
    ],
)
def test_every_error_class_has_one_code_and_http_status(
    error: errors.TallyError, code: int, http: int
) -> None:
    translated = status.to_status(error)
    assert (translated.code, status.code_of(error), status.http_status(translated.code)) == (code, code, http)
    info = details(translated)["ErrorInfo"]
    assert (info.reason, info.domain) == (error.reason, "tally")


def test_details_name_fields_and_retry_time() -> None:
    bad = details(status.to_status(errors.InvalidArgument.field("account.email", "not an email")))
    violation = bad["BadRequest"].field_violations[0]
    assert (violation.field, violation.description) == ("account.email", "not an email")
    limited = errors.ResourceExhausted("slow", retry_after=1.25, subject="echo:peer", limit_description="1/s")
    found = details(status.to_status(limited))
    assert found["RetryInfo"].retry_delay.ToTimedelta().total_seconds() == 1.25
    assert found["QuotaFailure"].violations[0].subject == "echo:peer"


def test_internal_status_says_nothing_of_the_cause() -> None:
    internal = status.internal_status()
    assert (internal.code, internal.message) == (code_pb2.INTERNAL, "internal error")
    assert details(internal)["ErrorInfo"].reason == "INTERNAL"


def test_code_names_and_unknown_numbers() -> None:
    assert status.code_name(code_pb2.NOT_FOUND) == "NOT_FOUND"
    assert status.code_name(99) == "UNKNOWN"
    assert status.http_status(99) == 500
    assert status.describe(errors.AlreadyExists("taken", reason="EMAIL_TAKEN")) == (
        "ALREADY_EXISTS (EMAIL_TAKEN): taken"
    )


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [
        (ListenError("TALLY_HTTP_ADDR", "127.0.0.1:8080", "address already in use"), 2),
        (errors.InvalidArgument.field("email", "bad"), 2),
        (errors.NotFound("no such account"), 2),
        (errors.AlreadyExists("taken", reason="EMAIL_TAKEN"), 1),
        (errors.Unavailable("the database is unavailable"), 1),
        # A RuntimeError that mentions binding is not a bind failure: only ListenError is.
        (RuntimeError("failed to bind the widget"), 1),
    ],
)
def test_cli_failures_by_type(error: Exception, exit_code: int) -> None:
    line, code = _failure(error, Settings())
    assert code == exit_code
    if isinstance(error, RuntimeError):
        assert line is None  # unexpected: logged with its traceback
    else:
        assert line is not None
        assert ("TALLY_HTTP_ADDR" in line) is isinstance(error, ListenError)

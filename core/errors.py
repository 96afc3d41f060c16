"""The one error hierarchy of Tally.

Domain and use-case code raise these; core.status translates them to a
google.rpc.Status (and its code to HTTP) in exactly one place, for the gRPC
error mapping, the REST gateway and the CLI. Nothing here knows about gRPC or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` is a dotted path into the request, as in google.rpc.BadRequest."""

    field: str
    description: str


class TallyError(Exception):
    """Base class. `reason` is an UPPER_SNAKE_CASE constant callers may branch on."""

    reason: str = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(TallyError):
    """The request itself is wrong, whatever the state of the system.

    `violations` name the bad fields. Only when no field can be named (bytes that did not
    parse, a value the database refused) may they be empty, and a message is then required.
    """

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: list[FieldViolation],
        *,
        message: str | None = None,
        reason: str | None = None,
    ):
        if not violations and message is None:
            raise ValueError("InvalidArgument needs a field violation or a message")
        if message is None:
            message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(message, reason=reason)
        self.violations = list(violations)

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)


class NotFound(TallyError):
    reason = "NOT_FOUND"


class AlreadyExists(TallyError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(TallyError):
    """The request is well-formed but the system is not in a state that allows it."""

    reason = "FAILED_PRECONDITION"


class Aborted(TallyError):
    """A concurrency conflict, such as an etag that no longer matches; re-read and retry."""

    reason = "ABORTED"


class Unauthenticated(TallyError):
    """No valid credentials. The message says what is wrong, never echoing the token."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(TallyError):
    """Authenticated, but not allowed to do this."""

    reason = "PERMISSION_DENIED"


class ResourceExhausted(TallyError):
    """A quota or rate limit was hit; `retry_after` seconds until it is worth trying again."""

    reason = "RATE_LIMITED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        subject: str = "",
        limit_description: str = "",
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ):
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after
        self.subject = subject
        self.limit_description = limit_description


class Unavailable(TallyError):
    """A dependency is down; the caller may retry with backoff."""

    reason = "UNAVAILABLE"


@dataclass
class Violations:
    """Collects field violations so that one error names every bad field at once."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

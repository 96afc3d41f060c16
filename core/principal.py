"""Who is calling: the authenticated principal of the current request.

The auth interceptor sets it for the duration of a call; use cases receive it
explicitly (through `Caller`), and cross-cutting code (rate limiting, logs,
audit) may read `current_principal()`.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    SERVICE = "service"
    CUSTOMER = "customer"


# What each role may do. A service account's scopes are its own (granted by an admin);
# a customer's are fixed, and object-level checks keep them to their own account.
CUSTOMER_SCOPES = frozenset(
    {
        "accounts:read",
        "accounts:write",
        "subscriptions:read",
        "usage:read",
        "invoices:read",
        "payments:read",
        "events:read",
        "auth:self",
    }
)
ALL_SCOPES = "*"


@dataclass(frozen=True)
class Principal:
    subject: str  # "usr_...", "svc_...", or "cli:<name>" for tokens minted by `tally token`
    role: Role
    scopes: frozenset[str] = field(default_factory=frozenset)
    account_id: str | None = None  # the one account a customer belongs to
    token_id: str | None = None  # the access token's jti
    session_id: str | None = None  # the login session (refresh token family), if any

    def has_scope(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes

    @property
    def is_customer(self) -> bool:
        return self.role is Role.CUSTOMER


def scopes_for(role: Role, granted: frozenset[str] = frozenset()) -> frozenset[str]:
    """The scopes a token of this role carries: admins all, customers a fixed set, services their grant."""
    if role is Role.ADMIN:
        return frozenset({ALL_SCOPES})
    if role is Role.CUSTOMER:
        return CUSTOMER_SCOPES
    return granted


_current: ContextVar[Principal | None] = ContextVar("tally_principal", default=None)


def current_principal() -> Principal | None:
    return _current.get()


def set_principal(principal: Principal | None) -> object:
    """Set the principal for the current task; returns a token for `reset_principal`."""
    return _current.set(principal)


def reset_principal(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Caller:
    """Who is asking, and through which request: what a use case needs for checks and the audit log."""

    principal: Principal | None = None
    method: str = ""
    request_id: str = ""

    @property
    def actor(self) -> str:
        return self.principal.subject if self.principal else "anonymous"

    @property
    def customer_account(self) -> str | None:
        """The account a customer is confined to; None for everyone else."""
        if self.principal is not None and self.principal.is_customer:
            return self.principal.account_id
        return None

    def idempotency_scope(self, operation: str) -> str:
        """Request ids are per caller: two callers never collide on the same key."""
        return f"{operation}:{self.actor}"


def caller_for(method: str, request_id: str = "") -> Caller:
    """The Caller of the RPC being served: the principal the auth interceptor set, and the method."""
    return Caller(current_principal(), method, request_id)


SYSTEM = Caller(Principal(subject="system", role=Role.ADMIN, scopes=frozenset({ALL_SCOPES})), method="system")

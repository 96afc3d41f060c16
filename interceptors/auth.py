"""Authentication and authorisation: every call needs a principal allowed by its method's policy.

Deny by default: a method without a policy is refused. A bearer token from the
`authorization` metadata is verified (signature, issuer, audience, times) and,
for login sessions, checked against revocation. Then the policy decides:
scopes, whether customers may call at all, and for customers, that the account
named in the request is their own (another account is NOT_FOUND, so nothing
leaks about which ids exist). The principal is then visible to the handler and
to inner interceptors through core.principal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from core.errors import NotFound, PermissionDenied, Unauthenticated
from core.principal import Principal, reset_principal, set_principal
from core.request_context import request_info
from core.text import excerpt
from interceptors.pipeline import Pipeline
from interceptors.policy import MethodPolicy, PolicyTable

_MAX_HEADER = 16 * 1024


class Verifier(Protocol):
    def verify(self, token: str) -> Principal: ...


SessionCheck = Callable[[str], Awaitable[bool]]


def bearer_token(metadata: Any) -> str | None:
    """The bearer token of raw invocation metadata (the first text `authorization` entry)."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            return bearer_value(value)
    return None


def bearer_value(value: str | None) -> str | None:
    """The token of an `authorization` header value; None without one."""
    if value is None:
        return None
    if len(value) > _MAX_HEADER:
        raise Unauthenticated("the authorization header is too large", reason="TOKEN_TOO_LARGE")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("use `authorization: Bearer <token>`", reason="TOKEN_MALFORMED")
    return token.strip()


def field_value(message: Any, path: str) -> str:
    """The string at a dotted field path of a request message ('' when unset)."""
    value = message
    for part in path.split("."):
        value = getattr(value, part, "")
    return value if isinstance(value, str) else ""


class AuthStage:
    """What interceptors.pipeline calls: the policy of a method (once), then per call `admit`,
    which makes the admitted principal current, and `release` when the handler has finished."""

    def __init__(
        self,
        policies: PolicyTable,
        verifier: Verifier,
        *,
        session_is_live: SessionCheck | None = None,
        on_failure: Callable[[str], None] = lambda reason: None,
    ):
        self._policies = policies
        self._verifier = verifier
        self._session_is_live = session_is_live
        self._on_failure = on_failure

    def policy(self, full_method: str) -> MethodPolicy | None:
        return self._policies.get(full_method)

    async def admit(
        self, method: str, policy: MethodPolicy | None, metadata: Mapping[str, str], request: Any
    ) -> object:
        """Admit the caller (or raise Unauthenticated, PermissionDenied, NotFound); the principal is
        then current and named in the call's RequestInfo. Returns the token for `release`."""
        # Client-streaming calls pass an iterator, not a message: they get no field check.
        message = request if hasattr(request, "DESCRIPTOR") else None
        try:
            principal = await self._admit(method, policy, metadata, message)
        except (Unauthenticated, PermissionDenied, NotFound) as exc:
            self._on_failure(exc.reason)
            raise
        info = request_info()  # the access log (outside this stage) names the caller
        if info is not None:
            info.principal = principal
        return set_principal(principal)

    def release(self, token: object) -> None:
        reset_principal(token)

    async def _admit(
        self, method: str, policy: MethodPolicy | None, metadata: Mapping[str, str], request: Any
    ) -> Principal | None:
        if policy is None:
            raise PermissionDenied(f"{method} declares no access policy", reason="NO_POLICY")
        token = bearer_value(metadata.get("authorization"))
        if policy.public:
            return None
        if token is None:
            raise Unauthenticated("this method needs `authorization: Bearer <token>`", reason="TOKEN_MISSING")
        principal = self._verifier.verify(token)
        if (
            principal.session_id
            and self._session_is_live
            and not await self._session_is_live(principal.session_id)
        ):
            raise Unauthenticated(
                "the session of this token has ended; log in again", reason="SESSION_REVOKED"
            )
        missing = [scope for scope in policy.scopes if not principal.has_scope(scope)]
        if missing:
            raise PermissionDenied(
                f"the token lacks scope {', '.join(missing)}",
                reason="SCOPE_MISSING",
                metadata={"scopes": " ".join(missing)},
            )
        if principal.is_customer:
            if not policy.customers_allowed:
                raise PermissionDenied("customers cannot call this method", reason="ROLE_NOT_ALLOWED")
            if policy.own_account_only:
                wanted = field_value(request, policy.customer_account_field) if request is not None else ""
                if wanted != principal.account_id:
                    raise NotFound(
                        f"account {excerpt(wanted)!r} not found",
                        reason="ACCOUNT_NOT_FOUND",
                        metadata={"id": excerpt(wanted)},
                    )
        return principal


class AuthInterceptor(Pipeline):
    """The auth stage alone, as an interceptor (inside error mapping)."""

    def __init__(
        self,
        policies: PolicyTable,
        verifier: Verifier,
        *,
        session_is_live: SessionCheck | None = None,
        on_failure: Callable[[str], None] = lambda reason: None,
    ):
        super().__init__(
            auth=AuthStage(policies, verifier, session_is_live=session_is_live, on_failure=on_failure)
        )

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

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import grpc

from core.errors import NotFound, PermissionDenied, Unauthenticated
from core.principal import Principal, reset_principal, set_principal
from core.request_context import request_info
from core.text import excerpt
from interceptors._rpc import wrap_handler
from interceptors.policy import MethodPolicy, PolicyTable

_MAX_HEADER = 16 * 1024


class Verifier(Protocol):
    def verify(self, token: str) -> Principal: ...


SessionCheck = Callable[[str], Awaitable[bool]]


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            if len(value) > _MAX_HEADER:
                raise Unauthenticated("the authorization header is too large", reason="TOKEN_TOO_LARGE")
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("use `authorization: Bearer <token>`", reason="TOKEN_MALFORMED")
            return token.strip()
    return None


def field_value(message: Any, path: str) -> str:
    """The string at a dotted field path of a request message ('' when unset)."""
    value = message
    for part in path.split("."):
        value = getattr(value, part, "")
    return value if isinstance(value, str) else ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
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

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        policy = self._policies.get(method)
        metadata = details.invocation_metadata

        return wrap_handler(
            handler,
            lambda request, _context: self._admitted(method, policy, metadata, request),
            enforce=True,
        )

    @asynccontextmanager
    async def _admitted(
        self, method: str, policy: MethodPolicy | None, metadata: Any, request: Any
    ) -> AsyncIterator[None]:
        """The principal admitted for this call, current while its handler runs."""
        # Client-streaming calls pass an iterator, not a message: they get no field check.
        message = request if hasattr(request, "DESCRIPTOR") else None
        try:
            principal = await self._admit(method, policy, metadata, message)
        except (Unauthenticated, PermissionDenied, NotFound) as exc:
            self._on_failure(exc.reason)
            raise
        info = request_info()  # the access log (outside this interceptor) names the caller
        if info is not None:
            info.principal = principal
        token = set_principal(principal)
        try:
            yield
        finally:
            reset_principal(token)

    async def _admit(
        self, method: str, policy: MethodPolicy | None, metadata: Any, request: Any
    ) -> Principal | None:
        if policy is None:
            raise PermissionDenied(f"{method} declares no access policy", reason="NO_POLICY")
        token = bearer_token(metadata)
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

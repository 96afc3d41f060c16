"""Per-call facts that outer layers need after inner layers have run: who called, and the request id.

The observability interceptor (outermost but tracing) creates one `RequestInfo`
per call and binds it here; inner layers fill it in:

    info = request_info()
    if info is not None:
        info.principal = principal          # the auth interceptor, once the token checks out

Why a mutable holder rather than `core.principal.current_principal()`: every
interceptor's wrapped behaviour runs in the call's one asyncio task, so a
ContextVar set by an inner layer *is* still visible to the outer one after the
inner coroutine returns, unless the inner layer resets it on the way out (as
it should: `set_principal()` ... `finally: reset_principal(token)`). After the
reset, the access log would see no principal; the holder survives it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass

from opentelemetry import trace

from core.principal import Principal

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(slots=True, eq=False)
class RequestInfo:
    request_id: str
    principal: Principal | None = None


_current: ContextVar[RequestInfo | None] = ContextVar("tally_request_info", default=None)


def request_info() -> RequestInfo | None:
    """The holder of the call being handled, or None outside a call."""
    return _current.get()


def new_request_id(offered: str | None = None) -> str:
    """The client's x-request-id if it is a sane token (letters, digits, `._:-`, <= 128), else a new one."""
    if offered and _VALID_REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def bind_request_info(info: RequestInfo) -> Token[RequestInfo | None]:
    return _current.set(info)


def reset_request_info(token: Token[RequestInfo | None]) -> None:
    _current.reset(token)


@contextmanager
def request_scope(info: RequestInfo) -> Iterator[RequestInfo]:
    token = bind_request_info(info)
    try:
        yield info
    finally:
        reset_request_info(token)


def current_trace_id() -> str:
    """The 32-hex-digit trace id of the current span, or "" outside a sampled or valid span."""
    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else ""

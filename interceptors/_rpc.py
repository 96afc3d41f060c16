"""Plumbing shared by the tracing and observability interceptors.

`wrap_handler` puts a per-call hook (a context manager) around any of the four
handler kinds; when the hook's block ends, `RpcCall.code` holds the status the
client will see. How that code is found in grpc.aio (checked by the tests):

* a handler that returns normally: `context.code()`, None unless `set_code`
  was called, so None means OK;
* `context.abort*()`: sets the code, then raises `grpc.aio.AbortError`, so
  `context.code()` holds it (grpcio 1.85 returns a `grpc.StatusCode`; older
  releases returned the bare int, so both are accepted);
* any other exception: grpc.aio answers UNKNOWN (ErrorMappingInterceptor, when
  it sits inside, turns them into aborts first);
* `asyncio.CancelledError`: the client cancelled, or the deadline passed. The
  client's own deadline timer usually fires first and its cancellation can
  reach the server a moment before the server's copy of the deadline expires,
  so a call cancelled within a small margin of its deadline (20 ms + 1 % of
  the time it was given, covering transit and grpc-timeout rounding) counts
  as DEADLINE_EXCEEDED, which is what the client saw.

Only `async` handlers are wrapped: synchronous ones (which grpc.aio runs in its
thread pool) pass through unobserved; Tally has none.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import grpc

_DEADLINE_MARGIN = 0.02
_DEADLINE_SHARE = 0.01
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

# Codes that mean the server failed, not the caller: OpenTelemetry's rule for gRPC server spans.
# They mark the span as an error and log the call at WARNING. Client errors (NOT_FOUND,
# INVALID_ARGUMENT, PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...) and CANCELLED do not.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def as_status_code(value: object) -> grpc.StatusCode | None:
    """`context.code()` normalised: a StatusCode, an int (older grpcio) or None."""
    if value is None:
        return None
    if isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, int):
        return _BY_NUMBER.get(value, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN


def split_method(full_method: str) -> tuple[str, str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service/Method', 'pkg.Service', 'Method')."""
    name = full_method.lstrip("/")
    service, _, method = name.rpartition("/")
    return name, service, method


def parse_peer(peer: str | None) -> tuple[str, int | None]:
    """'ipv4:10.0.0.1:5000' -> ('10.0.0.1', 5000); 'ipv6:[::1]:5000' -> ('::1', 5000);
    'unix:/x' -> ('/x', None)."""
    if not peer:
        return "", None
    scheme, sep, rest = peer.partition(":")
    if not sep:
        return peer, None
    if scheme not in ("ipv4", "ipv6"):
        return rest, None
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        return rest, None
    return host, int(port)


def text_metadata(metadata: Iterable[Any] | None) -> dict[str, str]:
    """Invocation metadata as {lower-case key: first text value}; binary (-bin) entries are skipped."""
    result: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(key, str) and isinstance(value, str):
            result.setdefault(key.lower(), value)
    return result


@dataclass(eq=False)
class RpcCall:
    """One call as the hooks see it; `code` and `error` are filled in when the handler finishes."""

    full_method: str
    metadata: dict[str, str]
    context: grpc.aio.ServicerContext
    name: str = field(init=False)
    service: str = field(init=False)
    method: str = field(init=False)
    code: grpc.StatusCode = grpc.StatusCode.OK
    error: BaseException | None = None  # an exception grpc.aio would report as UNKNOWN
    budget: float | None = field(init=False)  # seconds to the deadline when the call started

    def __post_init__(self) -> None:
        self.name, self.service, self.method = split_method(self.full_method)
        self.budget = self.context.time_remaining()

    def peer(self) -> str:
        try:
            return str(self.context.peer() or "")
        except Exception:  # the peer is informational; never fail a call over it
            return ""

    def finish(self, exc: BaseException | None) -> None:
        if exc is None:
            self.code = as_status_code(self.context.code()) or grpc.StatusCode.OK
        elif isinstance(exc, grpc.aio.AbortError):
            self.code = as_status_code(self.context.code()) or grpc.StatusCode.UNKNOWN
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code = (
                grpc.StatusCode.DEADLINE_EXCEEDED if self._deadline_passed() else grpc.StatusCode.CANCELLED
            )
        else:
            self.code = grpc.StatusCode.UNKNOWN
            self.error = exc

    def _deadline_passed(self) -> bool:
        remaining = self.context.time_remaining()
        if remaining is None or self.budget is None:
            return False
        return bool(remaining <= _DEADLINE_MARGIN + _DEADLINE_SHARE * self.budget)


Hook = Callable[[RpcCall], AbstractContextManager[object]]
Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


def replace_behavior(handler: grpc.RpcMethodHandler, *, unary: Wrap, stream: Wrap) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped: `unary` for methods answering one message,
    `stream` for methods streaming their answer. The one place that knows the four handler kinds."""
    for attribute, make, streams in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            wrapped = (stream if streams else unary)(behavior)
            return make(wrapped, handler.request_deserializer, handler.response_serializer)
    return handler


def wrap_handler(
    handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails, hook: Hook
) -> grpc.RpcMethodHandler:
    """The same handler with `hook(call)` entered around every call, for all four kinds."""
    full_method = details.method
    metadata = text_metadata(details.invocation_metadata)

    def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):
            return _wrap_generator(behavior, full_method, metadata, hook)
        if inspect.iscoroutinefunction(behavior):
            return _wrap_coroutine(behavior, full_method, metadata, hook)
        return behavior

    return replace_behavior(handler, unary=wrap, stream=wrap)


def _wrap_coroutine(
    behavior: Callable[..., Any], full_method: str, metadata: dict[str, str], hook: Hook
) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = RpcCall(full_method, metadata, context)
        with hook(call):
            try:
                result = await behavior(request, context)
            except BaseException as exc:
                call.finish(exc)
                raise
            call.finish(None)
            return result

    return wrapped


def _wrap_generator(
    behavior: Callable[..., AsyncIterator[Any]], full_method: str, metadata: dict[str, str], hook: Hook
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = RpcCall(full_method, metadata, context)
        with hook(call):
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                call.finish(exc)
                raise
            call.finish(None)

    return wrapped

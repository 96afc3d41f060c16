"""Plumbing every interceptor shares: one wrapper for all handler kinds, and the call's status.

`wrap_handler(handler, around)` returns the handler with `around(request, context)`, an
async context manager, entered before its behaviour runs and exited when it has finished
(with the exception, if one escaped). It is the one place that knows the handler kinds
grpc.aio accepts and keeps each one's shape, because grpc.aio picks how to drive a
behaviour by its shape:

* unary-unary and stream-unary: a coroutine function returning the response;
* unary-stream and stream-stream: an async generator function yielding responses, or a
  coroutine function that sends them with `await context.write(msg)` and returns None
  (grpc's own Health/Watch is one);
* synchronous functions (which grpc.aio runs in its thread pool): returned unwrapped, so
  observers do not see them; `enforce=True` refuses them with UNIMPLEMENTED instead, for
  interceptors that must not be bypassed (auth, rate limits). Tally has none.

It also makes the request deserializer safe. grpc.aio parses a unary request before any
interceptor's behaviour runs, and a parse error there is answered UNKNOWN naming a Python
exception class. Wrapped, a message that does not parse (corrupt bytes, invalid UTF-8 in a
string field) arrives as a `MalformedRequest` in place of the request, which the error
mapping answers INVALID_ARGUMENT (reason MALFORMED_MESSAGE) before anything else reads it;
in a request stream the parse error is raised as that INVALID_ARGUMENT from the iterator.

`observe(details, hook)` adapts a plain context-manager hook that receives an `RpcCall`;
when the hook's block ends, `RpcCall.code` holds the status the client will see. How that
code is found in grpc.aio (checked by the tests):

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
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from core.errors import InvalidArgument

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
Around = Callable[[Any, grpc.aio.ServicerContext], AbstractAsyncContextManager[object]]

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a unary request whose bytes did not parse; `problem` is the parser's own
    message (it names the message type, never the bytes)."""

    problem: str

    def error(self) -> InvalidArgument:
        return malformed_message()


def malformed_message() -> InvalidArgument:
    return InvalidArgument(
        [],
        message="the request message could not be parsed: corrupt bytes, or invalid UTF-8 in a string field",
        reason="MALFORMED_MESSAGE",
    )


Deserializer = Callable[[bytes], Any]


def _safe_deserializer(deserializer: Deserializer | None, streaming: bool) -> Deserializer | None:
    if deserializer is None or getattr(deserializer, "_tally_safe", False):
        return deserializer

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, and whatever a custom deserializer raises
            if streaming:
                raise malformed_message() from exc
            return MalformedRequest(str(exc))

    parse._tally_safe = True  # type: ignore[attr-defined]
    return parse


def wrap_handler(
    handler: grpc.RpcMethodHandler, around: Around, *, enforce: bool = False
) -> grpc.RpcMethodHandler:
    """The same handler with `around(request, context)` entered around every call (any kind)."""
    for attribute, make in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            wrapped = _wrap(behavior, around, enforce)
            deserializer = _safe_deserializer(handler.request_deserializer, handler.request_streaming)
            return make(wrapped, deserializer, handler.response_serializer)
    return handler


def _wrap(behavior: Callable[..., Any], around: Around, enforce: bool) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(request, context):
                async for response in behavior(request, context):
                    yield response

        return generator

    if inspect.iscoroutinefunction(behavior):
        # Unary answers and `context.write` streams alike: the coroutine's result passes through.
        async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(request, context):
                return await behavior(request, context)

        return coroutine

    if not enforce:
        return behavior

    async def refused(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "synchronous handlers are not supported")

    return refused


def observe(details: grpc.HandlerCallDetails, hook: Hook) -> Around:
    """An `around` that enters `hook(call)` for each call and fills in the call's final status."""
    full_method = details.method
    metadata = text_metadata(details.invocation_metadata)

    @asynccontextmanager
    async def around(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        call = RpcCall(full_method, metadata, context)
        with hook(call):
            try:
                yield
            except BaseException as exc:
                call.finish(exc)
                raise
            call.finish(None)

    return around

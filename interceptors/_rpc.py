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

`CallState` is one call as interceptors.pipeline's stages see it; once the handler has
finished, `CallState.code` holds the status the client will see (`finish_code`). How that
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
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
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


Around = Callable[[Any, grpc.aio.ServicerContext], AbstractAsyncContextManager[object]]

KINDS = (
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


def safe_deserializer(deserializer: Deserializer | None, streaming: bool) -> Deserializer | None:
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


@dataclass(frozen=True, slots=True)
class MethodNames:
    """A method's names, split once: 'pkg.Service/Method', 'pkg.Service', 'Method'."""

    full_method: str  # '/pkg.Service/Method', as grpc names it
    name: str
    service: str
    method: str

    @classmethod
    def of(cls, full_method: str) -> MethodNames:
        return cls(full_method, *split_method(full_method))


class CallState:
    """One call as the pipeline's stages see it (interceptors.pipeline), for every stage at once;
    `code` and `error` are filled in by `finish` when the handler has finished."""

    __slots__ = ("_peer", "budget", "code", "context", "error", "metadata", "names")

    def __init__(self, names: MethodNames, context: grpc.aio.ServicerContext) -> None:
        self.names = names
        self.context = context
        self.metadata = text_metadata(context.invocation_metadata())
        self.code: grpc.StatusCode = grpc.StatusCode.OK
        self.error: BaseException | None = None
        self.budget: float | None = context.time_remaining()
        self._peer: str | None = None

    @property
    def name(self) -> str:
        return self.names.name

    @property
    def service(self) -> str:
        return self.names.service

    @property
    def method(self) -> str:
        return self.names.method

    def peer(self) -> str:
        """`context.peer()`, asked once per call ('' if it cannot be had)."""
        if self._peer is None:
            try:
                self._peer = str(self.context.peer() or "")
            except Exception:  # the peer is informational; never fail a call over it
                self._peer = ""
        return self._peer

    def finish(self, exc: BaseException | None) -> None:
        self.code, self.error = finish_code(self.context, self.budget, exc)


def finish_code(
    context: grpc.aio.ServicerContext, budget: float | None, exc: BaseException | None
) -> tuple[grpc.StatusCode, BaseException | None]:
    """The status the client sees for a call that ended with `exc` (None: returned normally), and
    the exception grpc.aio reports as UNKNOWN, if that is what happened (see the module doc)."""
    if exc is None:
        return as_status_code(context.code()) or grpc.StatusCode.OK, None
    if isinstance(exc, grpc.aio.AbortError):
        return as_status_code(context.code()) or grpc.StatusCode.UNKNOWN, None
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        passed = (
            remaining is not None
            and budget is not None
            and remaining <= _DEADLINE_MARGIN + _DEADLINE_SHARE * budget
        )
        return (grpc.StatusCode.DEADLINE_EXCEEDED if passed else grpc.StatusCode.CANCELLED), None
    return grpc.StatusCode.UNKNOWN, exc


def wrap_handler(
    handler: grpc.RpcMethodHandler, around: Around, *, enforce: bool = False
) -> grpc.RpcMethodHandler:
    """The same handler with `around(request, context)` entered around every call (any kind)."""
    for attribute, make in KINDS:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            wrapped = _wrap(behavior, around, enforce)
            deserializer = safe_deserializer(handler.request_deserializer, handler.request_streaming)
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

"""interceptors._rpc.wrap_handler: every handler kind keeps its shape, since grpc.aio drives each by it.

The same wrappers run through real servers in tests/integration/test_interceptor_chain.py.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from interceptors._rpc import wrap_handler


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @asynccontextmanager
    async def around(self, request: Any, _context: Any) -> AsyncIterator[None]:
        self.seen.append(f"enter {request}")
        try:
            yield
        except Exception as exc:
            self.seen.append(f"error {exc}")
            raise
        self.seen.append("exit")


class Context:
    def __init__(self) -> None:
        self.written: list[str] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def write(self, message: str) -> None:
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


async def unary(request: str, _context: Any) -> str:
    return request.upper()


async def generated(request: str, _context: Any) -> AsyncIterator[str]:
    for part in request:
        yield part


async def written(request: str, context: Any) -> None:
    for part in request:
        await context.write(part)


async def failing(_request: str, context: Any) -> None:
    await context.write("a")
    raise ValueError("broken")


def sync_handler(request: str, _context: Any) -> str:
    return request


async def test_a_coroutine_stays_a_coroutine() -> None:
    events = Events()
    handler = wrap_handler(grpc.unary_unary_rpc_method_handler(unary), events.around)
    assert inspect.iscoroutinefunction(handler.unary_unary)
    assert await handler.unary_unary("ab", Context()) == "AB"
    assert events.seen == ["enter ab", "exit"]


async def test_a_generator_stays_a_generator() -> None:
    events = Events()
    handler = wrap_handler(grpc.unary_stream_rpc_method_handler(generated), events.around)
    assert inspect.isasyncgenfunction(handler.unary_stream)
    assert [part async for part in handler.unary_stream("ab", Context())] == ["a", "b"]
    assert events.seen == ["enter ab", "exit"]


@pytest.mark.parametrize(
    "make", [grpc.unary_stream_rpc_method_handler, grpc.stream_stream_rpc_method_handler]
)
async def test_a_writing_stream_stays_a_coroutine(make: Any) -> None:
    events = Events()
    handler = wrap_handler(make(written), events.around)
    behavior = handler.unary_stream or handler.stream_stream
    assert inspect.iscoroutinefunction(behavior)
    context = Context()
    assert await behavior("ab", context) is None
    assert context.written == ["a", "b"]
    assert events.seen == ["enter ab", "exit"]


async def test_the_wrapper_sees_the_error_of_a_writing_stream() -> None:
    events = Events()
    handler = wrap_handler(grpc.unary_stream_rpc_method_handler(failing), events.around)
    with pytest.raises(ValueError, match="broken"):
        await handler.unary_stream("x", Context())
    assert events.seen == ["enter x", "error broken"]


async def test_sync_handlers_pass_through_unless_enforced() -> None:
    events = Events()
    passed = wrap_handler(grpc.unary_unary_rpc_method_handler(sync_handler), events.around)
    assert passed.unary_unary is sync_handler
    enforced = wrap_handler(grpc.unary_unary_rpc_method_handler(sync_handler), events.around, enforce=True)
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await enforced.unary_unary("x", context)
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.UNIMPLEMENTED
    assert events.seen == []

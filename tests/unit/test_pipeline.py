"""interceptors.pipeline.Pipeline: the wrapped handler of a method is built once and reused.

Its per-call behaviour (every stage, in order, each handler kind) runs through real servers in
tests/integration/test_interceptor_chain.py, test_observability.py, test_rate_limit.py and
test_auth.py.
"""

from __future__ import annotations

import inspect
from typing import Any

import grpc

from interceptors.errors import ErrorStage
from interceptors.pipeline import Pipeline
from interceptors.validation import check_request


async def unary(request: Any, _context: Any) -> Any:
    return request


def sync_handler(request: Any, _context: Any) -> Any:
    return request


def details(method: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):
        pass

    found = Details()
    found.method = method
    found.invocation_metadata = ()
    return found


async def test_a_method_is_wrapped_once_and_its_handler_reused() -> None:
    pipeline = Pipeline(errors=ErrorStage(), text_policy=check_request)
    handler = grpc.unary_unary_rpc_method_handler(unary)

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    first = await pipeline.intercept_service(continuation, details("/pkg.S/A"))
    second = await pipeline.intercept_service(continuation, details("/pkg.S/A"))
    other = await pipeline.intercept_service(continuation, details("/pkg.S/B"))
    assert first is second
    assert first is not handler and first.unary_unary is not unary
    assert inspect.iscoroutinefunction(first.unary_unary)
    assert other is not first  # per method: its names, policy and metrics differ


async def test_a_new_handler_for_the_method_is_wrapped_anew() -> None:
    pipeline = Pipeline(errors=ErrorStage())
    handlers = [grpc.unary_unary_rpc_method_handler(unary), grpc.unary_unary_rpc_method_handler(unary)]

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handlers[0]

    first = await pipeline.intercept_service(continuation, details("/pkg.S/A"))
    handlers.pop(0)
    second = await pipeline.intercept_service(continuation, details("/pkg.S/A"))
    assert first is not second


async def test_nothing_to_do_leaves_the_handler_alone() -> None:
    streaming = grpc.stream_unary_rpc_method_handler(unary)
    synchronous = grpc.unary_unary_rpc_method_handler(sync_handler)
    text_only = Pipeline(text_policy=check_request)  # the text policy skips request streams
    assert text_only.wrap("/pkg.S/Up", streaming) is streaming
    assert Pipeline(errors=ErrorStage()).wrap("/pkg.S/Sync", synchronous) is synchronous

"""Stops work whose caller has stopped waiting.

gRPC tells the server the caller's deadline but does not interrupt the
handler when it passes; database and Redis calls would run on for nobody.
This interceptor runs each unary handler under `asyncio.timeout` set to the
time remaining, so the pending I/O is cancelled (and any transaction rolled
back) as soon as the deadline passes, and the call ends DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc


class DeadlineInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def bounded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            remaining = context.time_remaining()
            if remaining is None:
                return await behavior(request, context)
            scope = asyncio.timeout(max(remaining, 0))
            try:
                async with scope:
                    return await behavior(request, context)
            except TimeoutError:
                if not scope.expired():
                    raise  # a TimeoutError of the handler's own, not our deadline
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

        return grpc.unary_unary_rpc_method_handler(
            bounded, handler.request_deserializer, handler.response_serializer
        )

"""Turns exceptions that escape a handler into gRPC statuses with google.rpc details.

core.status decides the status of a core.errors exception; this interceptor only sends it,
as `grpc-status-details-bin`. Anything unexpected is logged with its traceback and answered
with a bare INTERNAL, so no stack trace, SQL or other internals reach the caller.

It is also where a request that did not parse is refused (`interceptors._rpc.MalformedRequest`),
before any interceptor inside it reads the request: INVALID_ARGUMENT, and one WARNING line
without a traceback, since the fault is the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
from grpc_status import rpc_status

from core import errors, status
from interceptors._rpc import MalformedRequest, wrap_handler

log = logging.getLogger("tally.errors")


async def abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    """End the call with the status for `exc`; always raises grpc.aio.AbortError."""
    if isinstance(exc, errors.TallyError):
        await context.abort_with_status(rpc_status.to_status(status.to_status(exc)))
    log.error("unhandled error in %s", method, exc_info=exc)
    await context.abort_with_status(rpc_status.to_status(status.internal_status()))


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return wrap_handler(handler, lambda request, context: _mapped(request, context, method))


@asynccontextmanager
async def _mapped(request: object, context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    if isinstance(request, MalformedRequest):
        log.warning("malformed request for %s: %s", method, request.problem)
        await abort(context, request.error(), method)
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        await abort(context, exc, method)

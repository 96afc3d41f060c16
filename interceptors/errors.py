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

import grpc
from grpc_status import rpc_status

from core import errors, status
from interceptors._rpc import MalformedRequest
from interceptors.pipeline import Pipeline

log = logging.getLogger("tally.errors")


async def abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    """End the call with the status for `exc`; always raises grpc.aio.AbortError."""
    if isinstance(exc, errors.TallyError):
        await context.abort_with_status(rpc_status.to_status(status.to_status(exc)))
    log.error("unhandled error in %s", method, exc_info=exc)
    await context.abort_with_status(rpc_status.to_status(status.internal_status()))


class ErrorStage:
    """What interceptors.pipeline calls: refuse a malformed request, map an escaped exception."""

    async def malformed(
        self, context: grpc.aio.ServicerContext, request: MalformedRequest, method: str
    ) -> None:
        log.warning("malformed request for %s: %s", method, request.problem)
        await abort(context, request.error(), method)

    async def abort(self, context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
        await abort(context, exc, method)


class ErrorMappingInterceptor(Pipeline):
    """The error mapping alone, as an interceptor (inside tracing and observability)."""

    def __init__(self) -> None:
        super().__init__(errors=ErrorStage())

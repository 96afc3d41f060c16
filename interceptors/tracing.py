"""A SERVER span per RPC, continuing the caller's trace from W3C `traceparent`/`tracestate` metadata.

The span is current while the handler runs, so inner interceptors, the access
log and SQL/Redis spans (core.telemetry) all hang off it. Attributes:
rpc.system, rpc.service, rpc.method, rpc.grpc.status_code (int),
network.peer.address/port. The status is ERROR only for codes that are the
server's fault (interceptors._rpc.SERVER_FAULTS: UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, as the OpenTelemetry gRPC
conventions say); client errors such as NOT_FOUND or INVALID_ARGUMENT leave it
unset. An exception that escapes the handler is recorded as a span event.

Put it first (outermost) in the interceptor list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import grpc
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from interceptors._rpc import SERVER_FAULTS, RpcCall, observe, wrap_handler
from interceptors.peer import parse_peer


class TracingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tracer: Tracer, *, propagator: TextMapPropagator | None = None) -> None:
        self._tracer = tracer
        self._propagator = propagator or TraceContextTextMapPropagator()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler, observe(handler_call_details, self._span))

    @contextmanager
    def _span(self, call: RpcCall) -> Iterator[None]:
        parent = self._propagator.extract(call.metadata)
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": call.service,
            "rpc.method": call.method,
        }
        peer = parse_peer(call.peer())
        if peer.address:
            attributes["network.peer.address"] = peer.address
        if peer.port is not None:
            attributes["network.peer.port"] = peer.port
        with self._tracer.start_as_current_span(
            call.name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            finally:
                span.set_attribute("rpc.grpc.status_code", call.code.value[0])
                if call.error is not None:
                    span.record_exception(call.error)
                if call.code in SERVER_FAULTS:
                    span.set_status(Status(StatusCode.ERROR, call.code.name))

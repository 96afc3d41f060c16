"""A SERVER span per RPC, continuing the caller's trace from W3C `traceparent`/`tracestate` metadata.

The span is current while the handler runs, so inner stages, the access log and SQL/Redis
spans (core.telemetry) all hang off it. Attributes: rpc.system, rpc.service, rpc.method,
rpc.grpc.status_code (int), network.peer.address/port. The status is ERROR only for codes
that are the server's fault (interceptors._rpc.SERVER_FAULTS: UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, as the OpenTelemetry gRPC conventions say);
client errors such as NOT_FOUND or INVALID_ARGUMENT leave it unset. An exception that escapes
the handler is recorded as a span event.

Whether a call is recorded is the tracer provider's sampler's decision (core.telemetry:
parent-based, OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG). An unsampled call gets a
non-recording span, which still carries the trace id to the logs and downstream, and pays
for no attributes: the per-method ones are built once, the peer is parsed only for a
recorded span, and the end attributes are set only on one.

`TracingStage` is what interceptors.pipeline calls; `TracingInterceptor` is the stage on its
own, as an interceptor (outermost).
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from interceptors._rpc import SERVER_FAULTS, CallState, MethodNames
from interceptors.peer import parse_peer
from interceptors.pipeline import Pipeline

_TRACE_HEADERS = ("traceparent", "tracestate")
_ROOT = otel_context.Context()


class MethodTracing:
    """The span name and constant attributes of one method."""

    __slots__ = ("attributes", "name", "stage")

    def __init__(self, stage: TracingStage, names: MethodNames) -> None:
        self.stage = stage
        self.name = names.name
        self.attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": names.service,
            "rpc.method": names.method,
        }

    def start(self, call: CallState) -> tuple[Span, object]:
        """Start the call's span and make it current; returns it with the context token."""
        stage = self.stage
        metadata = call.metadata
        # No trace headers: a root span (never a child of whatever context the task inherited).
        parent = stage.propagator.extract(metadata) if any(h in metadata for h in _TRACE_HEADERS) else _ROOT
        span = stage.tracer.start_span(
            self.name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=self.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():
            peer = parse_peer(call.peer())
            if peer.address:
                span.set_attribute("network.peer.address", peer.address)
            if peer.port is not None:
                span.set_attribute("network.peer.port", peer.port)
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    def end(self, call: CallState, started: tuple[Span, object] | None) -> None:
        if started is None:
            return
        span, token = started
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", call.code.value[0])
            if call.error is not None:
                span.record_exception(call.error)
            if call.code in SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, call.code.name))
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()


class TracingStage:
    def __init__(self, tracer: Tracer, *, propagator: TextMapPropagator | None = None) -> None:
        self.tracer = tracer
        self.propagator = propagator or TraceContextTextMapPropagator()

    def for_method(self, names: MethodNames) -> MethodTracing:
        return MethodTracing(self, names)


class TracingInterceptor(Pipeline):
    """The tracing stage alone (put it first, outermost, in an interceptor list)."""

    def __init__(self, tracer: Tracer, *, propagator: TextMapPropagator | None = None) -> None:
        super().__init__(tracing=TracingStage(tracer, propagator=propagator))

"""Tracing: an OpenTelemetry tracer provider configured from the standard OTEL_* variables.

`setup_tracing()` builds the provider (the composition root calls it once and
shuts it down on exit). `instrument_engine()` and `instrument_redis()` add a
CLIENT span per SQL statement and per Redis command, from OpenTelemetry's own
SQLAlchemy and Redis instrumentation, applied to one engine or client with our
provider (never globally, so each App and each test sees its own spans).

Variables honoured:

* OTEL_TRACES_EXPORTER: comma-separated `otlp`, `console`, `none`; default
  `none` (tracing costs nothing until asked for).
* OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
  OTEL_EXPORTER_OTLP_HEADERS, ..._TIMEOUT, ..._INSECURE, ..._CERTIFICATE:
  read by the OTLP/gRPC exporter itself. Only the gRPC protocol is installed.
* OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) overrides
  the service name given in code; OTEL_RESOURCE_ATTRIBUTES adds attributes.
* OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG: which calls are recorded
  (`sampler_from_env`): always_on, always_off, traceidratio, parentbased_always_on,
  parentbased_always_off or parentbased_traceidratio, the ratio in [0, 1] as the
  argument (default 1.0). Default parentbased_always_on: every call is recorded unless
  its caller sent an unsampled traceparent. Production under load should use
  parentbased_traceidratio with a small ratio (0.01-0.1): a caller's sampled trace is
  always continued, and an unsampled call pays for no span attributes and no SQL spans.
  OTEL_SDK_DISABLED=true: no spans at all.
* OTEL_BSP_*: batch processor queue, batch size and delays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio
from opentelemetry import trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.instrumentation.sqlalchemy.version import __version__ as _sqlalchemy_version
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Tracer
from sqlalchemy.ext.asyncio import AsyncEngine

TRACER_NAME = "tally"
_SQLALCHEMY_TRACER = "opentelemetry.instrumentation.sqlalchemy"
_EXPORTERS = ("otlp", "console", "none")


class TracingConfigError(ValueError):
    """An OTEL_* variable has a value Tally cannot honour."""


def exporters_from_env(environ: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (none by default); raises TracingConfigError."""
    env = os.environ if environ is None else environ
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    unknown = [n for n in names if n not in _EXPORTERS]
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: unsupported exporter {', '.join(unknown)}; use otlp, console or none"
        )
    exporters: list[SpanExporter] = []
    if "otlp" in names:
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol.strip().lower() != "grpc":
            raise TracingConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only grpc is supported; "
                "point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's gRPC port (4317)"
            )
        # Imported here: the gRPC exporter pulls in protobuf modules a non-tracing process never needs.
        # It reads OTEL_EXPORTER_OTLP_* itself; constructing it does not connect.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if "console" in names:
        exporters.append(ConsoleSpanExporter())
    return exporters


_SAMPLERS: dict[str, Callable[[float], sampling.Sampler]] = {
    "always_on": lambda ratio: sampling.ALWAYS_ON,
    "always_off": lambda ratio: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda ratio: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda ratio: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": lambda ratio: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
}
DEFAULT_SAMPLER = "parentbased_always_on"


def sampler_from_env(environ: Mapping[str, str] | None = None) -> sampling.Sampler:
    """The sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG name (see the module doc);
    raises TracingConfigError for a name or ratio Tally cannot honour, where the SDK would
    quietly sample everything."""
    env = os.environ if environ is None else environ
    name = (env.get("OTEL_TRACES_SAMPLER") or DEFAULT_SAMPLER).strip().lower()
    make = _SAMPLERS.get(name)
    if make is None:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER: unsupported sampler {name!r}; use one of {', '.join(_SAMPLERS)}"
        )
    argument = (env.get("OTEL_TRACES_SAMPLER_ARG") or "").strip()
    try:
        ratio = float(argument) if argument else 1.0
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER_ARG: the sampling ratio must be a number from 0 to 1, got {argument!r}"
        )
    return make(ratio)


def _resource(service_name: str) -> Resource:
    # Resource.create() lets attributes given in code win over the environment, so only
    # pass ours when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names the service.
    from_env = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    return Resource.create({} if from_env else {SERVICE_NAME: service_name})


def setup_tracing(
    service_name: str,
    *,
    exporter: SpanExporter | None = None,
    synchronous_export: bool = False,
    set_global: bool = False,
) -> TracerProvider:
    """A tracer provider exporting where the OTEL_* variables say, plus `exporter` if given.

    Exporters run behind a BatchSpanProcessor (export happens on a background
    thread), except `exporter` with `synchronous_export=True`, which gets a
    SimpleSpanProcessor: for tests with an InMemorySpanExporter. The provider is
    not made global unless `set_global`; call `provider.shutdown()` on exit to
    flush. With no exporter at all spans are still created (trace ids reach the
    logs and are propagated) but go nowhere.
    """
    provider = TracerProvider(resource=_resource(service_name), sampler=sampler_from_env())
    for env_exporter in exporters_from_env():
        provider.add_span_processor(BatchSpanProcessor(env_exporter))
    if exporter is not None:
        processor = SimpleSpanProcessor(exporter) if synchronous_export else BatchSpanProcessor(exporter)
        provider.add_span_processor(processor)
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def get_tracer(provider: trace.TracerProvider) -> Tracer:
    return provider.get_tracer(TRACER_NAME)


def instrument_engine(engine: AsyncEngine, provider: trace.TracerProvider) -> None:
    """A CLIENT span per SQL statement, a child of whatever span is current (the RPC's).

    OpenTelemetry's SQLAlchemy instrumentation listens on the sync engine, so engines derived
    with `execution_options()` (core.db.read_only) are covered too; SQLAlchemy's async layer
    runs the sync code in a greenlet that shares the task's contextvars, so the current span
    is the caller's. Attributes: db.system, db.name, db.statement (the SQL text with
    placeholders; parameter values are never recorded), db.operation, and server address and
    port for PostgreSQL. A failed statement's span is ERROR, described by the driver's
    message (PostgreSQL's primary message, without the DETAIL that may quote values). Call
    once per engine.

    `EngineTracer` is what `SQLAlchemyInstrumentor` attaches to an engine; using it directly
    instruments this engine alone, where the instrumentor would also patch
    `create_engine` for the whole process, once. A statement run while the current span is
    valid but not sampled gets no span at all.
    """
    tracer = trace.get_tracer(_SQLALCHEMY_TRACER, _sqlalchemy_version, tracer_provider=provider)
    # The instrumentation also counts pool connections; Tally's Prometheus pool gauges do that.
    connections = NoOpMeterProvider().get_meter(_SQLALCHEMY_TRACER).create_up_down_counter("unused")
    _SampledEngineTracer(tracer, engine.sync_engine, connections)  # type: ignore[no-untyped-call]


class _SampledEngineTracer(EngineTracer):
    """OpenTelemetry's engine tracer, skipping statements run under an unsampled span: a call the
    sampler dropped pays for no SQL span (no attributes, no operation name, no span ids). With
    no span current (a background job), the sampler decides, as before."""

    def _before_cur_exec(
        self, conn: Any, cursor: Any, statement: Any, params: Any, context: Any, executemany: Any
    ) -> Any:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid and not span_context.trace_flags.sampled:
            return statement, params
        return super()._before_cur_exec(conn, cursor, statement, params, context, executemany)  # type: ignore[no-untyped-call]


def instrument_redis(client: redis.asyncio.Redis, provider: trace.TracerProvider) -> None:
    """A CLIENT span per Redis command of this client (EVALSHA of the rate limiter, ...), with
    db.system, db.statement (`EVALSHA ? ? ?`: arguments are never recorded) and the server
    address. A failed or timed-out command's span is ERROR. Call once per client."""
    RedisInstrumentor.instrument_client(client, tracer_provider=provider)

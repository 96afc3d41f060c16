"""Tracing: an OpenTelemetry tracer provider configured from the standard OTEL_* variables.

`setup_tracing()` builds the provider (the composition root calls it once and
shuts it down on exit); `instrument_engine()` adds a span per SQL statement;
`traced()` wraps any other outgoing call (Redis) in a child span.

Variables honoured:

* OTEL_TRACES_EXPORTER: comma-separated `otlp`, `console`, `none`; default
  `none` (tracing costs nothing until asked for).
* OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
  OTEL_EXPORTER_OTLP_HEADERS, ..._TIMEOUT, ..._INSECURE, ..._CERTIFICATE:
  read by the OTLP/gRPC exporter itself. Only the gRPC protocol is installed.
* OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) overrides
  the service name given in code; OTEL_RESOURCE_ATTRIBUTES adds attributes.
* OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG: read by the SDK
  (default parentbased_always_on). OTEL_SDK_DISABLED=true: no spans at all.
* OTEL_BSP_*: batch processor queue, batch size and delays.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue
from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine

TRACER_NAME = "tally"
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
    provider = TracerProvider(resource=_resource(service_name))
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


@asynccontextmanager
async def traced(
    tracer: Tracer, name: str, *, kind: SpanKind = SpanKind.CLIENT, **attributes: AttributeValue
) -> AsyncIterator[Span]:
    """A child span of the current one around an outgoing call, e.g.

        async with traced(tracer, "redis EVALSHA", **{"db.system": "redis"}):
            await redis.evalsha(...)

    An exception marks the span ERROR (and is re-raised); cancellation does not.
    """
    with tracer.start_as_current_span(
        name, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


# --- SQL ------------------------------------------------------------------------------------------

_LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
_NAME = r'(?:"[^"]+"|`[^`]+`|[A-Za-z_][\w$]*)'
_TABLE = re.compile(
    rf"\b(?:FROM|INTO|UPDATE|TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?)\s+({_NAME}(?:\.{_NAME})?)", re.I
)
_STATEMENT_LIMIT = 4096
_CACHE_LIMIT = 1024
_SPAN_ATTR = "_tally_span"
_STACK_KEY = "_tally_spans"


def describe_sql(statement: str) -> tuple[str, str | None]:
    """('SELECT', 'accounts') for 'SELECT ... FROM accounts ...'; the table is a best guess or None."""
    comments = _LEADING_COMMENTS.match(statement)
    body = statement[comments.end() :] if comments else statement
    first = _FIRST_WORD.match(body)
    operation = first.group(0).upper() if first else "SQL"
    if operation in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA", "SET", "SHOW"):
        return operation, None
    table = _TABLE.search(body)
    return operation, table.group(1).replace('"', "").replace("`", "") if table else None


def instrument_engine(engine: AsyncEngine, tracer: Tracer) -> None:
    """A CLIENT span per SQL statement, a child of whatever span is current (the RPC's).

    Hooks `before/after_cursor_execute` and `handle_error` on the sync engine, so
    engines derived with `execution_options()` (core.db.read_only) are covered
    too. SQLAlchemy's async layer runs the sync code in a greenlet that shares
    the asyncio task's contextvars, so the current span is the caller's. Span
    attributes: db.system, db.operation, db.sql.table, db.statement (the SQL
    text with placeholders; parameter values are never recorded). Call once per
    engine.
    """
    sync_engine = engine.sync_engine
    base: dict[str, AttributeValue] = {"db.system": engine.dialect.name}  # postgresql, sqlite
    url = engine.url
    if url.host:
        base["server.address"] = url.host
        if url.port:
            base["server.port"] = url.port
        if url.database:
            base["db.name"] = url.database
    names: dict[str, tuple[str, str, str | None]] = {}

    def describe(statement: str) -> tuple[str, str, str | None]:
        known = names.get(statement)
        if known is None:
            operation, table = describe_sql(statement)
            known = (f"{operation} {table}" if table else operation, operation, table)
            if len(names) >= _CACHE_LIMIT:
                names.clear()
            names[statement] = known
        return known

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(
        conn: Connection,
        _cursor: Any,
        statement: str,
        _parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        name, operation, table = describe(statement)
        attributes = dict(base)
        attributes["db.operation"] = operation
        attributes["db.statement"] = statement[:_STATEMENT_LIMIT]
        if table:
            attributes["db.sql.table"] = table
        if executemany:
            attributes["db.executemany"] = True
        span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        if context is not None:
            setattr(context, _SPAN_ATTR, span)
        else:
            conn.info.setdefault(_STACK_KEY, []).append(span)

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after(
        conn: Connection,
        _cursor: Any,
        _statement: str,
        _parameters: Any,
        context: ExecutionContext | None,
        _executemany: bool,
    ) -> None:
        span = _take_span(conn, context)
        if span is not None:
            span.end()

    @event.listens_for(sync_engine, "handle_error")
    def _error(exception_context: ExceptionContext) -> None:
        span = _take_span(exception_context.connection, exception_context.execution_context)
        if span is None:
            return
        error = exception_context.original_exception
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


def _take_span(conn: Connection | None, context: ExecutionContext | None) -> Span | None:
    if context is not None:
        span: Span | None = getattr(context, _SPAN_ATTR, None)
        if span is not None:
            delattr(context, _SPAN_ATTR)
        return span
    if conn is None:
        return None
    stack: list[Span] = conn.info.get(_STACK_KEY, [])
    return stack.pop() if stack else None

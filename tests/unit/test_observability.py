"""Telemetry set-up, SQL and Redis spans, metrics, request context and log formatting, without a server.

The Redis span test that needs a live server is in tests/integration/test_observability.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from core.logs import JsonFormatter, TextFormatter, TraceContextFilter
from core.metrics import Metrics
from core.principal import Principal, Role
from core.request_context import RequestInfo, new_request_id, request_info, request_scope
from core.telemetry import (
    TracingConfigError,
    exporters_from_env,
    get_tracer,
    instrument_engine,
    instrument_redis,
    setup_tracing,
)
from interceptors._rpc import as_status_code, split_method, text_metadata

OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture(autouse=True)
def _clean_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def tracer(provider: TracerProvider) -> Tracer:
    return get_tracer(provider)


# --- setup_tracing --------------------------------------------------------------------------------


def test_no_exporter_by_default() -> None:
    assert exporters_from_env({}) == []
    assert exporters_from_env({"OTEL_TRACES_EXPORTER": "none"}) == []


def test_console_and_otlp_exporters() -> None:
    exporters = exporters_from_env(
        {"OTEL_TRACES_EXPORTER": "otlp, console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    try:
        assert [type(e) for e in exporters] == [OTLPSpanExporter, ConsoleSpanExporter]
    finally:
        for exp in exporters:
            exp.shutdown()


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
    ],
)
def test_unsupported_exporter_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(TracingConfigError, match="OTEL_"):
        exporters_from_env(environ)


def test_service_name_from_code_unless_the_environment_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = setup_tracing("tally")
    assert provider.resource.attributes["service.name"] == "tally"
    provider.shutdown()
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-eu")
    provider = setup_tracing("tally")
    assert provider.resource.attributes["service.name"] == "billing-eu"
    assert provider.resource.attributes["deployment.environment"] == "test"
    provider.shutdown()


def test_sampler_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = setup_tracing("tally")
    assert provider.sampler is ALWAYS_OFF
    provider.shutdown()


def test_explicit_exporter_receives_spans(exporter: InMemorySpanExporter) -> None:
    provider = setup_tracing("tally", exporter=exporter, synchronous_export=True)
    with get_tracer(provider).start_as_current_span("work"):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["work"]
    provider.shutdown()


def test_batched_exporter_flushes_on_shutdown(exporter: InMemorySpanExporter) -> None:
    provider = setup_tracing("tally", exporter=exporter)
    with get_tracer(provider).start_as_current_span("work"):
        pass
    provider.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["work"]


# --- SQL and Redis spans --------------------------------------------------------------------------


def by_statement(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {str((s.attributes or {}).get("db.statement")): s for s in exporter.get_finished_spans()}


async def test_sql_spans_follow_the_current_span_across_awaits(
    provider: TracerProvider, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    instrument_engine(engine, provider)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER UNIQUE)"))
            with tracer.start_as_current_span("rpc", kind=SpanKind.SERVER) as parent:
                await asyncio.sleep(0)
                await conn.execute(text("INSERT INTO t (x) VALUES (:x)"), {"x": 424242})
                await conn.execute(text("SELECT x FROM t WHERE x = :x"), {"x": 424242})
                with pytest.raises(IntegrityError):
                    await conn.execute(text("INSERT INTO t (x) VALUES (:x)"), {"x": 424242})
    finally:
        await engine.dispose()
    spans = by_statement(exporter)
    assert spans["CREATE TABLE t (x INTEGER UNIQUE)"].parent is None  # outside any span: a root
    insert, select = spans["INSERT INTO t (x) VALUES (?)"], spans["SELECT x FROM t WHERE x = ?"]
    for span in (insert, select):
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes is not None
        assert span.attributes["db.system"] == "sqlite"
    assert select.attributes is not None
    assert select.attributes["db.operation"] == "SELECT"
    failed = [s for s in exporter.get_finished_spans() if s.status.status_code is StatusCode.ERROR]
    assert [s.name for s in failed] == ["INSERT"]
    assert failed[0].end_time is not None
    # Parameter values appear nowhere: not in the statements, attributes or error descriptions.
    for span in exporter.get_finished_spans():
        assert "424242" not in f"{span.attributes} {span.status.description}"


async def test_redis_spans_of_one_client_mark_failures(
    provider: TracerProvider, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    with socket.socket() as probe:  # a port nothing listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    other = Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    instrument_redis(client, provider)
    try:
        with tracer.start_as_current_span("rpc") as parent:
            with pytest.raises(RedisConnectionError):
                await client.set("secret-key", "secret-value")
            with pytest.raises(RedisConnectionError):
                await other.get("not-instrumented")
    finally:
        await client.aclose()
        await other.aclose()
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert span.name == "SET"
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.attributes is not None
    assert span.attributes["db.system"] == "redis"
    assert span.attributes["db.statement"] == "SET ? ?"
    assert span.status.status_code is StatusCode.ERROR
    assert "secret" not in str(span.attributes)


# --- metrics --------------------------------------------------------------------------------------


def values(metrics: Metrics) -> dict[str, float]:
    """'name{k=v,...}' -> value, labels sorted."""
    result = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            result[f"{s.name}{{{labels}}}"] = s.value
    return result


def test_event_counters() -> None:
    metrics = Metrics()
    metrics.rate_limited("auth")
    metrics.rate_limited("auth")
    metrics.auth_failed("expired")
    found = values(metrics)
    assert found["tally_rate_limited_total{group=auth}"] == 2
    assert found["tally_auth_failures_total{reason=expired}"] == 1


def test_redis_fallbacks_count_transitions() -> None:
    metrics = Metrics()
    metrics.redis_up()
    metrics.redis_down()
    metrics.redis_down()
    assert values(metrics)["tally_rate_limiter_redis_up{}"] == 0
    assert values(metrics)["tally_rate_limiter_fallbacks_total{}"] == 1
    metrics.redis_up()
    assert values(metrics)["tally_rate_limiter_redis_up{}"] == 1
    metrics.redis_down()
    assert values(metrics)["tally_rate_limiter_fallbacks_total{}"] == 2


def test_registries_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.rpc_started("a/B")
    first.rpc_finished("a/B", "OK", 0.002)
    assert values(first)["tally_rpc_requests_total{code=OK,method=a/B}"] == 1
    assert "tally_rpc_requests_total{code=OK,method=a/B}" not in values(second)


async def test_pool_gauges_on_pools_without_statistics(tmp_path: Path) -> None:
    metrics = Metrics()
    engines = {
        "null": create_async_engine("sqlite+aiosqlite://", poolclass=NullPool),
        "static": create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool),
        "queue": create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", pool_size=3),
    }
    for name, engine in engines.items():
        metrics.watch_pool(engine, name)
    try:
        async with engines["queue"].connect() as conn:
            await conn.execute(text("SELECT 1"))
            found = values(metrics)
    finally:
        for engine in engines.values():
            await engine.dispose()
    assert not any("pool=null" in key or "pool=static" in key for key in found)
    assert found["tally_db_pool_size{pool=queue}"] == 3
    assert found["tally_db_pool_checked_out{pool=queue}"] == 1
    assert found["tally_db_pool_checked_in{pool=queue}"] == 0
    assert found["tally_db_pool_overflow{pool=queue}"] == 0


# --- gRPC helpers and request context -------------------------------------------------------------


def test_status_code_normalisation() -> None:
    assert as_status_code(None) is None
    assert as_status_code(grpc.StatusCode.NOT_FOUND) is grpc.StatusCode.NOT_FOUND
    assert as_status_code(5) is grpc.StatusCode.NOT_FOUND
    assert as_status_code(0) is grpc.StatusCode.OK
    assert as_status_code(99) is grpc.StatusCode.UNKNOWN


def test_method_and_metadata_helpers() -> None:
    assert split_method("/tally.account.v1.AccountService/GetAccount") == (
        "tally.account.v1.AccountService/GetAccount",
        "tally.account.v1.AccountService",
        "GetAccount",
    )
    metadata = (("TraceParent", "00-x"), ("blob-bin", b"\x00"), ("traceparent", "second"))
    assert text_metadata(metadata) == {"traceparent": "00-x"}
    assert text_metadata(None) == {}


def test_request_ids() -> None:
    assert new_request_id("req-1:a.b_c") == "req-1:a.b_c"
    for bad in (None, "", "has space", "x" * 129, "new\nline"):
        generated = new_request_id(bad)
        assert len(generated) == 32
        assert generated != bad


def test_request_scope_binds_and_restores() -> None:
    assert request_info() is None
    with request_scope(RequestInfo("r1")) as info:
        assert request_info() is info
        info.principal = Principal("usr_1", Role.ADMIN)
    assert request_info() is None
    assert info.principal is not None


# --- logs -----------------------------------------------------------------------------------------


def record(**extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "tally.access", "levelno": logging.INFO, "levelname": "INFO"})
    rec.msg = "rpc"
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_formatter_writes_extra_fields_on_one_line() -> None:
    line = JsonFormatter().format(record(method="a/B", code="OK", duration_ms=1.5, obj=object()))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "rpc"
    assert entry["level"] == "info"
    assert (entry["method"], entry["code"], entry["duration_ms"]) == ("a/B", "OK", 1.5)
    assert "message" not in entry


def test_text_formatter_appends_extra_fields() -> None:
    line = TextFormatter().format(record(method="a/B", code="OK"))
    assert line.endswith("INFO tally.access: rpc method=a/B code=OK")


def test_trace_context_filter(tracer: Tracer) -> None:
    plain = record()
    TraceContextFilter().filter(plain)
    assert not hasattr(plain, "trace_id")
    with tracer.start_as_current_span("rpc") as span:
        inside = record()
        TraceContextFilter().filter(inside)
    assert inside.__dict__["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert inside.__dict__["span_id"] == f"{span.get_span_context().span_id:016x}"


@pytest.mark.parametrize("created", [1764650000.0, 1764650000.999, 1764650001.5004, 1764653999.0421])
def test_json_formatter_time_is_iso_utc_to_the_millisecond(created: float) -> None:
    formatter = JsonFormatter()  # one formatter for every record: its second cache must not go stale
    for offset in (0.0, 1.0, 3600.25):
        rec = record()
        rec.created = created + offset
        expected = datetime.fromtimestamp(created + offset, UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(rec))["time"] == expected

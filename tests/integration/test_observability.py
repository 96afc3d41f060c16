"""Tracing, metrics and the access log through a real in-process gRPC server and a real HTTP server.

One test builds the whole server (app.server.build) with Redis, for its SQL and Redis spans.

The probe service uses identity (bytes) serializers and does real SQL on an
instrumented SQLite engine. Interceptors, outermost first: TracingInterceptor,
ObservabilityInterceptor, a stand-in auth interceptor, ErrorMappingInterceptor.

Synchronisation: an aborted call's status reaches the client before the
server-side wrappers finish, so tests wait for the server span to end (it ends
last, after the metrics and the access log are written) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.http import HttpServer
from app.server import build
from core import db
from core.errors import NotFound
from core.logs import JsonFormatter
from core.metrics import Metrics
from core.principal import Principal, Role, current_principal, reset_principal, set_principal
from core.request_context import request_info
from core.settings import Settings
from core.telemetry import get_tracer, instrument_engine, setup_tracing
from interceptors.errors import ErrorMappingInterceptor
from interceptors.observability import ObservabilityInterceptor
from interceptors.tracing import TracingInterceptor
from tally.account.v1 import account_pb2, account_pb2_grpc
from tests.support import JWT_SECRET, REDIS_URL, TEST_SECRET, cheap_passwords, unavailable

SERVICE = "test.observability.v1.Probe"
SECRET_PAYLOAD = b"payload-that-must-not-be-logged"
SECRET_TOKEN = "token-that-must-not-be-logged"
HEX32 = re.compile(r"[0-9a-f]{32}")


def ident(value: bytes) -> bytes:
    return value


def method(name: str) -> str:
    return f"{SERVICE}/{name}"


class Probe:
    def __init__(self, engine: AsyncEngine) -> None:
        self.readers = db.read_only(engine)
        self.engine = engine
        self.hanging = asyncio.Event()

    async def query(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        async with self.readers.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM probe"))).scalar_one()
        return str(count).encode()

    async def bad_sql(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
        return b""

    async def missing(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        raise NotFound("no such probe")

    async def boom(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("internal detail")

    async def who_am_i(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        principal = current_principal()
        return principal.subject.encode() if principal else b""

    async def hang(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        self.hanging.set()
        await asyncio.Event().wait()
        return b""

    async def listing(self, request: bytes, _context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(3):
            yield request + str(i).encode()

    async def upload(self, requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext) -> bytes:
        return str(len([r async for r in requests])).encode()

    async def chat(
        self, requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    def handler(self) -> grpc.GenericRpcHandler:
        unary = {
            "Query": self.query,
            "BadSql": self.bad_sql,
            "Missing": self.missing,
            "Boom": self.boom,
            "WhoAmI": self.who_am_i,
            "Hang": self.hang,
        }
        handlers = {name: grpc.unary_unary_rpc_method_handler(fn, ident, ident) for name, fn in unary.items()}
        handlers["List"] = grpc.unary_stream_rpc_method_handler(self.listing, ident, ident)
        handlers["Upload"] = grpc.stream_unary_rpc_method_handler(self.upload, ident, ident)
        handlers["Chat"] = grpc.stream_stream_rpc_method_handler(self.chat, ident, ident)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


class FakeAuth(grpc.aio.ServerInterceptor):
    """Sets the principal for the call and resets it on the way out, like interceptors.auth does.

    With metadata `x-test-fill-holder` it also fills the request_context holder.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        if handler is None or handler.unary_unary is None or "authorization" not in metadata:
            return handler
        fill_holder = "x-test-fill-holder" in metadata
        behavior = handler.unary_unary

        async def guarded(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            principal = Principal("usr_alice", Role.CUSTOMER)
            info = request_info()
            if fill_holder and info is not None:
                info.principal = principal
            token = set_principal(principal)
            try:
                return await behavior(request, context)
            finally:
                reset_principal(token)

        return grpc.unary_unary_rpc_method_handler(
            guarded, handler.request_deserializer, handler.response_serializer
        )


class _Notify(SpanProcessor):
    def __init__(self, event: asyncio.Event) -> None:
        self._event = event

    def on_end(self, span: ReadableSpan) -> None:
        self._event.set()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Harness:
    channel: grpc.aio.Channel
    probe: Probe
    exporter: InMemorySpanExporter
    metrics: Metrics
    log: _Lines
    ended: asyncio.Event

    async def unary(self, name: str, payload: bytes = b"", **kwargs: Any) -> bytes:
        stub = self.channel.unary_unary(
            f"/{method(name)}", request_serializer=ident, response_deserializer=ident
        )
        return bytes(await stub(payload, **kwargs))

    async def failing(self, name: str, **kwargs: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.unary(name, **kwargs)
        return caught.value

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]

    def spans(self, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind is kind]

    async def settled(self, calls: int) -> list[ReadableSpan]:
        """Wait until `calls` server spans have ended: their metrics and log lines are written by then."""
        async with asyncio.timeout(10):
            while len(self.server_spans()) < calls:
                self.ended.clear()
                await self.ended.wait()
        return self.server_spans()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.lines]

    def rpc_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["msg"] == "rpc"]


@pytest.fixture(autouse=True)
def _no_env_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)


@asynccontextmanager
async def running(
    tmp_path: Path, *, error_mapping: bool = True, quiet: tuple[str, ...] = (), host: str = "127.0.0.1"
) -> AsyncIterator[Harness]:
    engine = db.create_engine(Settings(data_dir=tmp_path))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))
        await conn.execute(text("INSERT INTO probe (name) VALUES ('a'), ('b')"))
    exporter = InMemorySpanExporter()
    provider = setup_tracing("tally-test", exporter=exporter, synchronous_export=True)
    ended = asyncio.Event()
    provider.add_span_processor(_Notify(ended))
    tracer = get_tracer(provider)
    instrument_engine(engine, provider)
    metrics = Metrics()
    metrics.watch_pool(engine)
    lines = _Lines()
    logger = logging.getLogger("tally.test.access")
    logger.handlers[:] = [lines]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    probe = Probe(engine)
    interceptors: list[grpc.aio.ServerInterceptor] = [
        TracingInterceptor(tracer),
        ObservabilityInterceptor(metrics, logger, quiet_methods=quiet),
        FakeAuth(),
    ]
    if error_mapping:
        interceptors.append(ErrorMappingInterceptor())
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((probe.handler(),))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
            yield Harness(channel, probe, exporter, metrics, lines, ended)
    finally:
        await server.stop(0)
        provider.shutdown()
        logger.handlers[:] = []
        await engine.dispose()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as h:
        yield h


# --- tracing --------------------------------------------------------------------------------------


async def test_one_server_span_per_call_with_rpc_attributes(harness: Harness) -> None:
    assert await harness.unary("Query") == b"2"
    assert await harness.unary("Query") == b"2"
    spans = await harness.settled(2)
    assert len(spans) == 2
    assert spans[0].context.trace_id != spans[1].context.trace_id  # no parent sent: each is a root
    for span in spans:
        assert span.name == method("Query")
        assert span.parent is None
        assert span.attributes is not None
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == SERVICE
        assert span.attributes["rpc.method"] == "Query"
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert span.attributes["network.peer.address"] == "127.0.0.1"
        assert isinstance(span.attributes["network.peer.port"], int)
        assert span.status.status_code is StatusCode.UNSET


def sql_spans(harness: Harness, statement: str) -> list[ReadableSpan]:
    return [
        s
        for s in harness.spans(SpanKind.CLIENT)
        if s.attributes is not None and s.attributes.get("db.statement") == statement
    ]


async def test_sql_span_is_a_child_of_the_rpc_span(harness: Harness) -> None:
    await harness.unary("Query")
    (server,) = await harness.settled(1)
    (span,) = sql_spans(harness, "SELECT count(*) FROM probe")
    assert span.context.trace_id == server.context.trace_id
    assert span.parent is not None
    assert span.parent.span_id == server.context.span_id
    assert span.attributes is not None
    assert span.attributes["db.system"] == "sqlite"
    # OpenTelemetry's SQLAlchemy instrumentation names statements "<first word> <database>".
    database = harness.probe.engine.url.database
    assert span.attributes["db.name"] == database
    assert span.name == span.attributes["db.operation"] == f"SELECT {database}"
    # Reads through core.db.read_only are autocommit on SQLite as on PostgreSQL: no BEGIN.
    assert sql_spans(harness, "BEGIN") == []


async def test_failed_sql_span_is_an_error_child(harness: Harness) -> None:
    error = await harness.failing("BadSql")
    assert error.code() is grpc.StatusCode.INTERNAL
    (server,) = await harness.settled(1)
    (sql,) = sql_spans(harness, "SELECT * FROM no_such_table")
    assert sql.parent is not None
    assert sql.parent.span_id == server.context.span_id
    assert sql.status.status_code is StatusCode.ERROR
    assert "no_such_table" in (sql.status.description or "")
    assert sql.end_time is not None


async def test_client_traceparent_is_continued(harness: Harness) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"), ("tracestate", "vendor=abc"))
    await harness.unary("Query", metadata=metadata)
    (server,) = await harness.settled(1)
    assert server.context.trace_id == int(trace_id, 16)
    assert server.parent is not None
    assert server.parent.span_id == int(parent_id, 16)
    assert server.parent.is_remote
    assert server.context.trace_state.get("vendor") == "abc"
    sql = sql_spans(harness, "SELECT count(*) FROM probe")
    assert [s.context.trace_id for s in sql] == [int(trace_id, 16)]


async def test_ipv6_peer_is_shown_decoded(tmp_path: Path) -> None:
    """gRPC reports this client as `ipv6:%5B::1%5D:port`; spans and the access log show `::1`."""
    async with running(tmp_path, host="[::1]") as harness:
        await harness.unary("Query")
        (span,) = await harness.settled(1)
        assert span.attributes is not None
        assert span.attributes["network.peer.address"] == "::1"
        port = span.attributes["network.peer.port"]
        assert isinstance(port, int)
        (record,) = harness.rpc_records()
        assert record["peer"] == f"[::1]:{port}"


async def test_aborted_call_records_its_status_code(harness: Harness) -> None:
    error = await harness.failing("Missing")
    assert error.code() is grpc.StatusCode.NOT_FOUND
    (span,) = await harness.settled(1)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == 5
    assert span.status.status_code is StatusCode.UNSET  # a client error is not the server's fault


async def test_internal_error_marks_the_span_error(harness: Harness) -> None:
    error = await harness.failing("Boom")
    assert error.code() is grpc.StatusCode.INTERNAL
    (span,) = await harness.settled(1)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == 13
    assert span.status.status_code is StatusCode.ERROR
    assert "internal detail" not in (error.details() or "")


async def test_unmapped_exception_is_unknown_and_recorded(tmp_path: Path) -> None:
    async with running(tmp_path, error_mapping=False) as harness:
        error = await harness.failing("Boom")
        assert error.code() is grpc.StatusCode.UNKNOWN
        (span,) = await harness.settled(1)
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == 2
        assert span.status.status_code is StatusCode.ERROR
        assert [e.name for e in span.events] == ["exception"]
        (record,) = harness.rpc_records()
        assert record["code"] == "UNKNOWN"
        assert record["error"] == "RuntimeError"
        assert record["level"] == "warning"


async def test_all_four_handler_kinds_are_traced(harness: Harness) -> None:
    def stub(kind: str, name: str) -> Any:
        return getattr(harness.channel, kind)(
            f"/{method(name)}", request_serializer=ident, response_deserializer=ident
        )

    async def requests() -> AsyncIterator[bytes]:
        for chunk in (b"x", b"y"):
            yield chunk

    assert [r async for r in stub("unary_stream", "List")(b"n")] == [b"n0", b"n1", b"n2"]
    assert await stub("stream_unary", "Upload")(requests()) == b"2"
    assert [r async for r in stub("stream_stream", "Chat")(requests())] == [b"x", b"y"]
    assert await harness.unary("Query") == b"2"
    spans = await harness.settled(4)
    assert sorted(s.name for s in spans) == sorted(method(n) for n in ("List", "Upload", "Chat", "Query"))
    assert all(s.attributes is not None and s.attributes["rpc.grpc.status_code"] == 0 for s in spans)
    codes = {r["method"]: r["code"] for r in harness.rpc_records()}
    assert codes == {method(n): "OK" for n in ("List", "Upload", "Chat", "Query")}


async def test_cancelled_call_is_cancelled_not_an_error(harness: Harness) -> None:
    stub = harness.channel.unary_unary(
        f"/{method('Hang')}", request_serializer=ident, response_deserializer=ident
    )
    call = stub(b"")
    await harness.probe.hanging.wait()
    call.cancel()
    (span,) = await harness.settled(1)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert span.status.status_code is StatusCode.UNSET
    assert harness.rpc_records()[0]["code"] == "CANCELLED"


async def test_deadline_exceeded_is_a_server_fault(harness: Harness) -> None:
    error = await harness.failing("Hang", timeout=0.2)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    (span,) = await harness.settled(1)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert span.status.status_code is StatusCode.ERROR
    assert harness.rpc_records()[0]["code"] == "DEADLINE_EXCEEDED"


async def test_redis_and_sql_spans_through_the_real_server(tmp_path: Path) -> None:
    """The composition root instruments its own engine and Redis client with its tracer provider."""
    redis_url = REDIS_URL
    probe = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await probe.ping()
    except (RedisError, OSError) as exc:
        await probe.aclose()
        unavailable(f"Redis is not reachable at {redis_url}: {exc!r}; set TALLY_TEST_REDIS_URL")
    exporter = InMemorySpanExporter()
    provider = setup_tracing("tally-test", exporter=exporter, synchronous_export=True)
    ended = asyncio.Event()
    provider.add_span_processor(_Notify(ended))
    settings = Settings(
        data_dir=tmp_path,
        secret_key=TEST_SECRET,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        jwt_hs256_secret=JWT_SECRET,
        redis_url=redis_url,
    )
    app = await build(settings, passwords=cheap_passwords(), tracer_provider=provider)
    await app.start()
    subject = f"test:spans-{uuid.uuid4().hex[:8]}"
    try:
        token = app.components.issuer.issue(Principal(subject, Role.ADMIN, frozenset({"*"})), 600).token
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = account_pb2_grpc.AccountServiceStub(channel)
            await stub.ListAccounts(
                account_pb2.ListAccountsRequest(), metadata=(("authorization", f"Bearer {token}"),)
            )
        async with asyncio.timeout(10):
            while not [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]:
                ended.clear()
                await ended.wait()
    finally:
        await app.stop(grace=0)
        async for key in probe.scan_iter(match=f"tally:rl:*:{subject}"):
            await probe.delete(key)
        await probe.aclose()
    (server,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    children = [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    redis_spans = [s for s in children if (s.attributes or {}).get("db.system") == "redis"]
    assert redis_spans, [s.name for s in children]
    for span in redis_spans:
        assert span.name in ("EVALSHA", "EVAL")  # EVAL once, when Redis has not cached the script
        assert span.attributes is not None
        statement = str(span.attributes["db.statement"])
        assert statement.startswith(span.name + " ?")
        assert subject not in statement  # the bucket key names the caller: never recorded
    assert any((s.attributes or {}).get("db.system") == "sqlite" for s in children)


# --- metrics over HTTP ----------------------------------------------------------------------------


@asynccontextmanager
async def http_server(metrics: Metrics, **kwargs: Any) -> AsyncIterator[str]:
    """A started HttpServer on a free port; yields its base URL."""
    kwargs.setdefault("jwks", lambda: {"keys": []})
    server = HttpServer("127.0.0.1:0", metrics=metrics, **kwargs)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


async def fetch(url: str) -> Fetched:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return Fetched(response.status, dict(response.headers), await response.text())


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def sample(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return values[(name, frozenset(labels.items()))]


async def test_metrics_endpoint_counts_calls(harness: Harness) -> None:
    calls = 3
    for _ in range(calls):
        await harness.unary("Query")
    await harness.failing("Missing")
    await harness.settled(calls + 1)
    async with http_server(harness.metrics) as base:
        response = await fetch(f"{base}/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    body = response.body
    query, missing = method("Query"), method("Missing")
    assert f'tally_rpc_requests_total{{code="OK",method="{query}"}} {float(calls)}' in body
    values = samples(body)
    assert sample(values, "tally_rpc_requests_total", method=query, code="OK") == calls
    assert sample(values, "tally_rpc_requests_total", method=missing, code="NOT_FOUND") == 1
    assert sample(values, "tally_rpc_duration_seconds_count", method=query) == calls
    assert sample(values, "tally_rpc_duration_seconds_bucket", method=query, le="0.001") <= calls
    assert sample(values, "tally_rpc_duration_seconds_bucket", method=query, le="10.0") == calls
    assert sample(values, "tally_rpc_duration_seconds_bucket", method=query, le="+Inf") == calls
    assert sample(values, "tally_rpc_in_flight", method=query) == 0
    assert sample(values, "tally_rpc_in_flight", method=missing) == 0
    assert sample(values, "tally_db_pool_size", pool="main") >= 1
    assert sample(values, "tally_db_pool_checked_out", pool="main") == 0
    assert ("tally_db_pool_overflow", frozenset({("pool", "main")})) in values
    assert sample(values, "tally_rate_limiter_redis_up") == 0
    assert sample(values, "tally_rate_limiter_fallbacks_total") == 0


async def test_in_flight_counts_a_running_call(harness: Harness) -> None:
    stub = harness.channel.unary_unary(
        f"/{method('Hang')}", request_serializer=ident, response_deserializer=ident
    )
    call = stub(b"")
    await harness.probe.hanging.wait()
    assert (
        sample(samples(harness.metrics.render().decode()), "tally_rpc_in_flight", method=method("Hang")) == 1
    )
    call.cancel()
    await harness.settled(1)
    assert (
        sample(samples(harness.metrics.render().decode()), "tally_rpc_in_flight", method=method("Hang")) == 0
    )


async def test_jwks_health_and_extra_routes() -> None:
    keys = {"keys": [{"kty": "OKP", "kid": "k1", "crv": "Ed25519", "x": "abc"}]}
    healthy = True

    async def health() -> bool:
        return healthy

    async def hello(_request: web.Request) -> web.Response:
        return web.json_response({"hello": "rest"})

    server = http_server(Metrics(), jwks=lambda: keys, health=health, routes=[web.get("/v1/hello", hello)])
    async with server as base:
        response = await fetch(f"{base}/.well-known/jwks.json")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert "max-age=300" in response.headers["Cache-Control"]
        assert response.json() == keys
        response = await fetch(f"{base}/healthz")
        assert (response.status, response.json()) == (200, {"status": "SERVING"})
        healthy = False
        response = await fetch(f"{base}/healthz")
        assert (response.status, response.json()) == (503, {"status": "NOT_SERVING"})
        assert (await fetch(f"{base}/v1/hello")).json() == {"hello": "rest"}
        assert (await fetch(f"{base}/nope")).status == 404


async def test_health_that_raises_is_503_and_no_callable_is_200() -> None:
    async def broken() -> bool:
        raise ConnectionError("database down")

    async with http_server(Metrics(), health=broken) as base:
        assert (await fetch(f"{base}/healthz")).status == 503
    async with http_server(Metrics()) as base:
        assert (await fetch(f"{base}/healthz")).status == 200


async def test_http_server_port_and_double_start() -> None:
    server = HttpServer("127.0.0.1:0", metrics=Metrics(), jwks=dict)
    with pytest.raises(RuntimeError):
        _ = server.port
    await server.start()
    try:
        assert server.port > 0
        with pytest.raises(RuntimeError):
            await server.start()
    finally:
        await server.stop()
    await server.stop()  # idempotent


# --- access log -----------------------------------------------------------------------------------


async def test_one_access_log_record_per_call(harness: Harness) -> None:
    metadata = (("authorization", f"Bearer {SECRET_TOKEN}"), ("x-request-id", "req-123"))
    await harness.unary("Query", SECRET_PAYLOAD, metadata=metadata)
    await harness.failing("Missing", metadata=(("authorization", f"Bearer {SECRET_TOKEN}"),))
    await harness.failing("Boom")
    spans = await harness.settled(3)
    records = harness.rpc_records()
    assert [r["method"] for r in records] == [method("Query"), method("Missing"), method("Boom")]
    assert [r["code"] for r in records] == ["OK", "NOT_FOUND", "INTERNAL"]
    assert [r["level"] for r in records] == ["info", "info", "warning"]
    trace_ids = {s.name: f"{s.context.trace_id:032x}" for s in spans}
    for record in records:
        assert record["logger"] == "tally.test.access"
        assert HEX32.fullmatch(record["trace_id"])
        assert record["trace_id"] == trace_ids[record["method"]]
        assert isinstance(record["duration_ms"], float)
        assert record["duration_ms"] >= 0
        assert record["peer"].startswith("127.0.0.1:")
        assert record["request_id"]
    assert records[0]["request_id"] == "req-123"
    assert records[1]["request_id"] != "req-123"
    text_out = "\n".join(harness.log.lines)
    assert SECRET_PAYLOAD.decode() not in text_out
    assert SECRET_TOKEN not in text_out
    assert "internal detail" not in text_out


async def test_principal_reaches_the_access_log_through_the_holder(harness: Harness) -> None:
    auth = ("authorization", f"Bearer {SECRET_TOKEN}")
    # Auth resets its ContextVar on the way out: the outer interceptor cannot see the principal...
    assert await harness.unary("WhoAmI", metadata=(auth,)) == b"usr_alice"
    # ...unless the auth layer also fills the per-call holder from core.request_context.
    assert await harness.unary("WhoAmI", metadata=(auth, ("x-test-fill-holder", "1"))) == b"usr_alice"
    await harness.settled(2)
    without, with_holder = harness.rpc_records()
    assert "principal" not in without
    assert with_holder["principal"] == "usr_alice"
    assert SECRET_TOKEN not in "\n".join(harness.log.lines)


async def test_unknown_method_is_logged_and_counted_without_its_name(harness: Harness) -> None:
    error = await harness.failing("NoSuchMethod", metadata=(("x-request-id", "r-9"),))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
    (record,) = harness.rpc_records()
    assert (record["method"], record["code"], record["request_id"]) == (
        method("NoSuchMethod"),
        "UNIMPLEMENTED",
        "r-9",
    )
    body = harness.metrics.render().decode()
    assert 'tally_rpc_requests_total{code="UNIMPLEMENTED",method="unknown"} 1.0' in body
    assert "NoSuchMethod" not in body
    assert harness.server_spans() == []


async def test_quiet_methods_log_success_at_debug(tmp_path: Path) -> None:
    async with running(tmp_path, quiet=(method("Query"), method("Missing"))) as harness:
        await harness.unary("Query")
        await harness.failing("Missing")
        await harness.settled(2)
        assert [(r["code"], r["level"]) for r in harness.rpc_records()] == [
            ("OK", "debug"),
            ("NOT_FOUND", "info"),
        ]

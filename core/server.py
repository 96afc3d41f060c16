"""The composition root: builds every part from one Settings object and runs the server.

Nothing is connected at import time. `build_components()` wires the shared
parts (database, keys, use-case dependencies) that the server and the CLI
both use; `build()` adds the gRPC server, its interceptor chain and the HTTP
side; `serve()` adds signal handling and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis.asyncio as redis_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc.audit_servicer import AuditServicer
from account_svc.identity.domain import Argon2Hasher, PasswordHasher
from account_svc.identity.servicer import AuthServicer
from account_svc.identity.sessions import SessionCache
from account_svc.identity.use_cases import IdentityDeps
from account_svc.servicer import AccountServicer
from account_svc.unit_of_work import SqlAccountsUnitOfWork
from account_svc.use_cases import AccountDeps
from core import db, migrate, telemetry
from core.clock import Clock, SystemClock
from core.http import HttpServer
from core.keys import KeyRing, load_keyring
from core.metrics import Metrics
from core.pagination import PageTokens
from core.settings import Settings
from core.tokens import TokenIssuer, TokenVerifier
from gateway.app import gateway_routes
from interceptors.auth import AuthInterceptor
from interceptors.errors import ErrorMappingInterceptor
from interceptors.observability import ObservabilityInterceptor
from interceptors.policy import PolicyTable
from interceptors.rate_limit import RateLimiter, RateLimitInterceptor
from interceptors.tracing import TracingInterceptor
from tally.account.v1 import account_pb2, account_pb2_grpc, audit_pb2, audit_pb2_grpc, auth_pb2, auth_pb2_grpc

log = logging.getLogger("tally.server")

SERVICES = (
    account_pb2.DESCRIPTOR.services_by_name["AccountService"],
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
)
SERVICE_NAMES = tuple(service.full_name for service in SERVICES)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Deliberate transport limits: message size, streams, keepalive and connection age."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # Headers up to 16 KiB, so an over-long token reaches the auth interceptor and gets a clear
        # UNAUTHENTICATED instead of gRPC's random soft-limit rejections between 8 and 16 KiB.
        ("grpc.max_metadata_size", 16 * 1024),
        # gRPC sets SO_REUSEPORT by default: a second server on a busy port would start and
        # silently take half the connections. Fail to bind instead.
        ("grpc.so_reuseport", 0),
        # Ping idle clients every 2 minutes and drop them if they do not answer in 20 s.
        ("grpc.keepalive_time_ms", 120_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Clients may ping every 30 s at most (gRPC's default would GOAWAY them after 5 min).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Recycle connections hourly so load spreads over new replicas; in-flight calls get 30 s.
        ("grpc.max_connection_age_ms", 3_600_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


def page_token_secret(settings: Settings) -> bytes:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.data_dir / "secret.key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
        log.warning("generated a signing key at %s; set TALLY_SECRET_KEY to share one across replicas", path)
    return path.read_text().strip().encode()


@dataclass
class Components:
    """The parts shared by `tally serve` and the CLI commands."""

    settings: Settings
    engine: AsyncEngine
    clock: Clock
    keyring: KeyRing
    issuer: TokenIssuer
    verifier: TokenVerifier
    accounts: AccountDeps
    identity: IdentityDeps
    sessions: SessionCache

    async def close(self) -> None:
        await self.engine.dispose()


async def prepare_database(settings: Settings, engine: AsyncEngine) -> None:
    if settings.should_migrate_on_start:
        before, after = await migrate.upgrade(engine)
        if before != after:
            log.info("database migrated from %s to %s", before or "empty", after)
    else:
        await migrate.check_current(engine)


async def build_components(
    settings: Settings, *, clock: Clock | None = None, passwords: PasswordHasher | None = None
) -> Components:
    clock = clock or SystemClock()
    engine = db.create_engine(settings)
    try:
        await prepare_database(settings, engine)
        keyring = load_keyring(settings, log=log)
    except BaseException:
        await engine.dispose()
        raise
    writers = db.session_factory(engine)
    readers = db.session_factory(db.read_only(engine))

    def new_uow() -> SqlAccountsUnitOfWork:
        return SqlAccountsUnitOfWork(writers)

    def new_reader() -> SqlAccountsUnitOfWork:
        return SqlAccountsUnitOfWork(readers)

    page_tokens = PageTokens(page_token_secret(settings))
    issuer = TokenIssuer.from_settings(keyring, settings, clock)
    sessions = SessionCache(new_reader, clock)
    identity = IdentityDeps(
        new_uow=new_uow,
        new_reader=new_reader,
        clock=clock,
        passwords=passwords or Argon2Hasher(),
        issuer=issuer,
        page_tokens=page_tokens,
        access_ttl_seconds=settings.access_token_ttl_seconds,
        refresh_ttl_seconds=settings.refresh_token_ttl_seconds,
        on_session_revoked=sessions.forget,
    )
    return Components(
        settings=settings,
        engine=engine,
        clock=clock,
        keyring=keyring,
        issuer=issuer,
        verifier=TokenVerifier.from_settings(keyring, settings, clock),
        accounts=AccountDeps(new_uow=new_uow, new_reader=new_reader, clock=clock, page_tokens=page_tokens),
        identity=identity,
        sessions=sessions,
    )


class ListenError(Exception):
    """A listen address could not be bound; the message names the setting."""


class Readiness:
    """Whether this process takes traffic: true from start() until stop() begins."""

    def __init__(self) -> None:
        self.serving = False

    async def check(self) -> bool:
        return self.serving


@dataclass
class App:
    settings: Settings
    components: Components
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    http: HttpServer
    metrics: Metrics
    tracer_provider: TracerProvider
    redis: redis_asyncio.Redis | None
    gateway_channel: grpc.aio.Channel
    port: int
    policies: PolicyTable
    readiness: Readiness

    @property
    def engine(self) -> AsyncEngine:
        return self.components.engine

    @property
    def http_port(self) -> int:
        return self.http.port

    async def start(self) -> None:
        await self.server.start()
        try:
            await self.http.start()
        except OSError as exc:
            await self.server.stop(0)
            raise ListenError(
                f"cannot listen on {self.settings.http_addr} (TALLY_HTTP_ADDR): {exc.strerror or exc}"
            ) from exc
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.readiness.serving = True

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish within the grace period, then close everything."""
        self.readiness.serving = False
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        await self.http.stop()
        await self.gateway_channel.close()
        if self.redis is not None:
            await self.redis.aclose()
        self.tracer_provider.shutdown()
        await self.components.close()


def _redis_client(url: str) -> redis_asyncio.Redis:
    # Short timeouts and one quick retry: the limiter stops waiting after 100 ms anyway, and a
    # slow Redis must not hold connections for redis-py's default 5 s x 10 retries.
    return redis_asyncio.from_url(
        url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 1)
    )


def _rate_limiter(settings: Settings, metrics: Metrics, client: redis_asyncio.Redis | None) -> RateLimiter:
    return RateLimiter(
        settings.rate_limits,
        client,
        settings.rate_limit_fail_closed,
        on_reject=lambda group, decision: metrics.rate_limited(group),
        on_redis_down=metrics.redis_down,
        on_redis_up=metrics.redis_up,
    )


async def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    passwords: PasswordHasher | None = None,
    tracer_provider: TracerProvider | None = None,
) -> App:
    components = await build_components(settings, clock=clock, passwords=passwords)
    try:
        metrics = Metrics()
        metrics.watch_pool(components.engine)
        provider = tracer_provider or telemetry.setup_tracing("tally")
        tracer = telemetry.get_tracer(provider)
        telemetry.instrument_engine(components.engine, tracer)
        client = _redis_client(settings.redis_url) if settings.redis_url else None
        if client is not None:
            metrics.redis_up()  # the limiter reports changes from here on
        policies = PolicyTable.from_services(SERVICES)
        # The chain, outermost first. Tracing sees everything; observability logs and counts every
        # call with its final code; error mapping turns domain errors (including the auth and
        # rate-limit refusals below it) into statuses; auth decides who is calling; the rate
        # limit is charged to that principal. Deadlines need no interceptor: grpc.aio cancels the
        # handler's task when the caller's deadline passes, which cancels the pending database
        # statement on the server and any Redis call (tests/integration/test_concurrency.py).
        # A second, home-made timeout would cancel the task twice and break that clean-up.
        interceptors = [
            TracingInterceptor(tracer),
            ObservabilityInterceptor(metrics),
            ErrorMappingInterceptor(),
            AuthInterceptor(
                policies,
                components.verifier,
                session_is_live=components.sessions.is_live,
                on_failure=metrics.auth_failed,
            ),
            RateLimitInterceptor(_rate_limiter(settings, metrics, client), policies.rate),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
        account_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(components.accounts), server)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(components.identity), server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(components.accounts.new_reader, components.accounts.page_tokens), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = server.add_insecure_port(settings.grpc_addr)
        readiness = Readiness()
        # The REST face calls this very server over gRPC, so it passes the same interceptor chain.
        gateway_channel = grpc.aio.insecure_channel(_loopback(settings.grpc_addr, port))
        http = HttpServer(
            settings.http_addr,
            metrics=metrics,
            jwks=components.keyring.jwks,
            health=readiness.check,
            routes=gateway_routes(
                SERVICES,
                gateway_channel,
                strict=settings.gateway_strict,
                cors_origins=settings.cors_origins,
                max_body_bytes=settings.gateway_max_body_bytes,
                use_proto_names=settings.gateway_proto_names,
            ),
        )
    except BaseException:
        await components.close()
        raise
    return App(
        settings=settings,
        components=components,
        server=server,
        health=health_servicer,
        http=http,
        metrics=metrics,
        tracer_provider=provider,
        redis=client,
        gateway_channel=gateway_channel,
        port=port,
        policies=policies,
        readiness=readiness,
    )


def _loopback(grpc_addr: str, port: int) -> str:
    """Where this process reaches its own gRPC port (a wildcard bind is reached on loopback)."""
    host = grpc_addr.rpartition(":")[0]
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"{host}:{port}"


def _listen_address(address: str, port: int) -> str:
    return f"{address.rpartition(':')[0]}:{port}"


async def serve(settings: Settings) -> None:
    app = await build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    grpc_addr = _listen_address(settings.grpc_addr, app.port)
    http_addr = _listen_address(settings.http_addr, app.http_port)
    log.info(
        "tally serving gRPC on %s and HTTP on %s (database: %s; rate limits: %s)",
        grpc_addr,
        http_addr,
        settings.describe_database(),
        "Redis" if settings.redis_url else "in-process",
        extra={"grpc_addr": grpc_addr, "http_addr": http_addr, "data_dir": str(Path(settings.data_dir))},
    )
    await stop.wait()
    log.info("shutting down: finishing in-flight calls (up to %.0f s)", settings.shutdown_grace_seconds)
    await app.stop()
    log.info("stopped")

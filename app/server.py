"""The composition root: builds every part from one Settings object and runs the server.

Nothing is connected at import time. `build_components()` wires the shared
parts (database, keys, use-case dependencies) that the server and the CLI
both use; `build()` adds the gRPC server, its interceptor chain and the HTTP
side; `serve()` adds signal handling and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis_asyncio
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc.directory import SqlAccountDirectory
from account_svc.identity.keys import KeyRing
from account_svc.identity.sessions import SessionCache
from account_svc.identity.tokens import TokenIssuer, TokenVerifier
from account_svc.identity.use_cases import IdentityDeps
from account_svc.module import AccountServices
from account_svc.use_cases import AccountDeps
from app import migrate
from app.health import DatabaseProbe, HealthService, Readiness, probe_engine
from app.http import HttpServer
from app.modules import MODULES
from app.reflection import enable_reflection
from billing_svc.collection import CollectionWorker
from billing_svc.module import BillingServices
from billing_svc.payments.reconciler import PaymentReconciler
from billing_svc.usage.upkeep import UsageUpkeep
from billing_svc.webhooks.delivery import SEALING_PURPOSE, WebhookDeliverer
from billing_svc.worker import BillingWorker
from core import db, telemetry
from core.cache import NoCache, RedisReadCache
from core.clock import Clock, SystemClock
from core.forwarding import ClientForwarding, GatewayProof
from core.idempotency import ExpiredKeyPurger
from core.metrics import Metrics
from core.modules import Platform, ServiceModule
from core.outbox import CommitSignal
from core.pagination import PageTokens
from core.sealing import ServerKey
from core.settings import ListenError, Settings, SettingsError, check_can_listen
from gateway.app import gateway_routes
from interceptors.auth import AuthStage
from interceptors.errors import ErrorStage
from interceptors.observability import ObservabilityStage
from interceptors.pipeline import Pipeline
from interceptors.policy import PolicyTable
from interceptors.rate_limit import RateLimiter, RateLimitStage
from interceptors.tracing import TracingStage
from interceptors.validation import check_request

log = logging.getLogger("tally.server")


def server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Deliberate transport limits: message size, streams, keepalive and connection age.
    `reuse_port` only for a worker of `tally serve --workers N` (app/supervisor.py)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # Headers up to 16 KiB, so an over-long token reaches the auth interceptor and gets a clear
        # UNAUTHENTICATED instead of gRPC's random soft-limit rejections between 8 and 16 KiB.
        ("grpc.max_metadata_size", 16 * 1024),
        # gRPC sets SO_REUSEPORT by default: a second server on a busy port would start and
        # silently take half the connections. Fail to bind instead, except in the workers of
        # `--workers N`, which share the port deliberately (the supervisor checked it was free).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
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
    """The parts shared by `tally serve` and the CLI commands: the platform and every module's
    dependencies, by module name."""

    settings: Settings
    platform: Platform
    services: dict[str, Any]
    modules: tuple[ServiceModule[Any], ...]
    cache: RedisReadCache | None = None  # the read cache's own Redis client, when caching is on

    @property
    def service_descriptors(self) -> tuple[ServiceDescriptor, ...]:
        return tuple(service for module in self.modules for service in module.services)

    def service_names(self) -> tuple[str, ...]:
        return tuple(service.full_name for service in self.service_descriptors)

    @property
    def engine(self) -> AsyncEngine:
        return self.platform.engine

    @property
    def clock(self) -> Clock:
        return self.platform.wall_clock

    # The identity parts the composition root wires into the auth interceptor, JWKS and CLI.
    @property
    def _accounts(self) -> AccountServices:
        services: AccountServices = self.services["accounts"]
        return services

    @property
    def accounts(self) -> AccountDeps:
        return self._accounts.accounts

    @property
    def identity(self) -> IdentityDeps:
        return self._accounts.identity

    @property
    def sessions(self) -> SessionCache:
        return self._accounts.sessions

    @property
    def keyring(self) -> KeyRing:
        return self._accounts.keyring

    @property
    def issuer(self) -> TokenIssuer:
        return self._accounts.issuer

    @property
    def verifier(self) -> TokenVerifier:
        return self._accounts.verifier

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        billing = self.services.get("billing")
        if isinstance(billing, BillingServices):
            await billing.payments.gateways.close()  # the adapters' HTTP sessions
        await self.engine.dispose()


# The request-id claim is one INSERT ... ON CONFLICT ... RETURNING, which SQLite has since 3.35.
MIN_SQLITE = (3, 35, 0)


def check_sqlite_version(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    if version < MIN_SQLITE:
        found, needed = ".".join(map(str, version)), ".".join(map(str, MIN_SQLITE))
        raise SettingsError(
            f"the embedded database needs SQLite {needed} or newer, this Python has {found}; "
            "use a newer Python build or set TALLY_DATABASE_URL to PostgreSQL"
        )


async def prepare_database(settings: Settings, engine: AsyncEngine) -> None:
    if engine.dialect.name == "sqlite":
        check_sqlite_version()
    if settings.should_migrate_on_start:
        before, after = await migrate.upgrade(engine)
        if before != after:
            log.info("database migrated from %s to %s", before or "empty", after)
    else:
        await migrate.check_current(engine)


def known_scopes(modules: tuple[ServiceModule[Any], ...] = MODULES) -> frozenset[str]:
    """The scopes Tally knows: every scope the access policy of a served RPC requires."""
    return PolicyTable.from_services(service for module in modules for service in module.services).scopes()


async def build_components(
    settings: Settings,
    *,
    clock: Clock | None = None,
    passwords: object | None = None,
    modules: tuple[ServiceModule[Any], ...] = MODULES,
    overrides: Mapping[str, object] | None = None,
) -> Components:
    """The platform, then every service module on it. `passwords` replaces the password hasher;
    `overrides` are handed to the modules as `Platform.overrides` (each documents the names it reads)."""
    clock = clock or SystemClock()
    engine = db.create_engine(settings)
    cache = _read_cache(settings)
    outbox_commits = CommitSignal()
    try:
        await prepare_database(settings, engine)
        secret = page_token_secret(settings)
        platform = Platform(
            settings=settings,
            engine=engine,
            writers=db.session_factory(engine, commits=outbox_commits),
            readers=db.session_factory(db.read_only(engine)),
            snapshots=db.session_factory(db.snapshot_reader(engine)),
            wall_clock=clock,
            page_tokens=PageTokens(secret),
            server_key=ServerKey(secret),
            known_scopes=known_scopes(modules),
            account_directory=SqlAccountDirectory,
            overrides={
                **_crash_hooks(),
                **(overrides or {}),
                **({"passwords": passwords} if passwords is not None else {}),
            },
            cache=cache or NoCache(),
            outbox_commits=outbox_commits,
        )
        services = {module.name: module.build(platform) for module in modules}
    except BaseException:
        if cache is not None:
            await cache.close()
        await engine.dispose()
        raise
    return Components(settings=settings, platform=platform, services=services, modules=modules, cache=cache)


# Crash tests only (tests/e2e/test_payment_crash.py): with this variable set to 1, the process kills
# itself with SIGKILL right after a payment gateway answers a charge and before the answer is
# recorded, the worst moment for a crash. Its TALLY_TEST_ prefix keeps it out of the settings. Set
# here, in the components `tally serve` and `tally worker` both build, it is the payments module's
# `after_charge`, called wherever a charge is made: PayInvoice, CreatePayment, the collection worker.
CRASH_AFTER_CHARGE = "TALLY_TEST_CRASH_AFTER_CHARGE"


def _crash_hooks() -> dict[str, object]:
    if os.environ.get(CRASH_AFTER_CHARGE) != "1":
        return {}

    def die(result: object) -> None:
        log.warning("%s is set: killing this process after the charge", CRASH_AFTER_CHARGE)
        os.kill(os.getpid(), signal.SIGKILL)

    return {"payment_after_charge": die}


def _read_cache(settings: Settings) -> RedisReadCache | None:
    """The read-through cache (core/cache.py) on a Redis client of its own, whose socket timeouts
    are the cache's bound: a slow Redis costs a read at most that, then the database answers."""
    if not settings.cache_enabled or settings.redis_url is None:
        return None
    timeout = settings.cache_timeout_ms / 1000
    client = redis_asyncio.from_url(
        settings.redis_url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return RedisReadCache(client, ttl_seconds=settings.cache_ttl_seconds, timeout_seconds=timeout)


@dataclass
class App:
    settings: Settings
    components: Components
    server: grpc.aio.Server
    health: HealthService
    http: HttpServer
    metrics: Metrics
    tracer_provider: TracerProvider
    redis: redis_asyncio.Redis | None
    gateway_channel: grpc.aio.Channel
    port: int
    policies: PolicyTable
    readiness: Readiness
    purger: ExpiredKeyPurger | None = None
    usage_upkeep: UsageUpkeep | None = None
    webhooks: WebhookDeliverer | None = None
    billing_worker: BillingWorker | None = None
    collection_worker: CollectionWorker | None = None
    payment_reconciler: PaymentReconciler | None = None
    limiter: RateLimiter | None = None
    _jobs: list[asyncio.Task[None]] = field(default_factory=list)

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
            raise ListenError.of("TALLY_HTTP_ADDR", self.settings.http_addr, exc) from exc
        await self.readiness.started()
        if self.purger is not None:
            self._jobs.append(asyncio.create_task(self.purger.run(), name="purge-expired-request-ids"))
        if self.usage_upkeep is not None:
            self._jobs.append(asyncio.create_task(self.usage_upkeep.run(), name="usage-upkeep"))
        if self.webhooks is not None:
            self._jobs.append(asyncio.create_task(self.webhooks.run(), name="webhook-delivery"))
        if self.billing_worker is not None:
            self._jobs.append(asyncio.create_task(self.billing_worker.run(), name="billing-worker"))
        if self.collection_worker is not None:
            self._jobs.append(asyncio.create_task(self.collection_worker.run(), name="collection-worker"))
        if self.payment_reconciler is not None:
            reconciling = self.payment_reconciler.run()
            self._jobs.append(asyncio.create_task(reconciling, name="payment-reconciler"))
        interval = self.settings.readiness_probe_interval_seconds
        if interval:
            probe = DatabaseProbe(probe_engine(self.settings), interval, self._database_changed)
            self._jobs.append(asyncio.create_task(probe.run(), name="database-readiness-probe"))

    async def _database_changed(self, up: bool) -> None:
        if up:
            # The pool may still hold connections to the server that went away (no pre-ping, by
            # design): drop them, so that once we say ready again no call meets a dead one.
            await self.engine.dispose()
        await self.readiness.database(up)

    async def drain(self) -> None:
        """Report NOT_SERVING everywhere while still serving, so load balancers stop routing here
        before anything is refused (serve() waits the drain period between this and stop())."""
        await self.readiness.drain()

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, stop accepting on both ports, let in-flight calls finish within the
        grace period, then close everything."""
        await self.readiness.drain()
        billing = self.components.services.get("billing")
        if isinstance(billing, BillingServices):
            billing.events.stop_watches()  # watches end (OK) now instead of at the end of the grace
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        # Both sides at once: a REST call that got in has its gRPC call in flight, which the
        # gRPC grace covers.
        await asyncio.gather(self.server.stop(grace), self.http.stop(grace))
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        self._jobs.clear()
        await self.gateway_channel.close()
        if self.redis is not None:
            if self.limiter is not None:
                await self.limiter.settle()  # unspent reserved tokens go back to the shared buckets
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
        on_redis_call=metrics.rate_limiter_redis_call,
        batch=settings.rate_limit_batch,
        batch_fraction=settings.rate_limit_batch_fraction,
        lease=settings.rate_limit_lease_seconds,
    )


def _gateway_proof(settings: Settings) -> GatewayProof:
    """The in-process gateway signs with a secret drawn now, which no caller can know; a stand-alone
    gateway's proofs (TALLY_GATEWAY_SECRET) are accepted too."""
    shared = settings.gateway_secret
    return GatewayProof(secrets.token_bytes(32), [shared.get_secret_value().encode()] if shared else [])


async def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    passwords: object | None = None,
    tracer_provider: TracerProvider | None = None,
    modules: tuple[ServiceModule[Any], ...] = MODULES,
    overrides: Mapping[str, object] | None = None,
    reuse_port: bool = False,
) -> App:
    """The whole server for `modules` (every service module, unless a test serves fewer or more).
    `reuse_port`: bind both ports with SO_REUSEPORT (the workers of `--workers N` only)."""
    components = await build_components(
        settings, clock=clock, passwords=passwords, modules=modules, overrides=overrides
    )
    try:
        metrics = process_metrics(components)
        provider = tracer_provider or telemetry.setup_tracing("tally")
        tracer = telemetry.get_tracer(provider)
        telemetry.instrument_engine(components.engine, provider)
        client = _redis_client(settings.redis_url) if settings.redis_url else None
        if client is not None:
            telemetry.instrument_redis(client, provider)
            metrics.redis_up()  # the limiter reports changes from here on
        services = components.service_descriptors
        policies = PolicyTable.from_services(services)
        gateway_proof = _gateway_proof(settings)
        # The chain, as one interceptor (interceptors.pipeline), outermost stage first. Tracing sees
        # everything; observability logs and counts every call with its final code; error mapping
        # turns domain errors (including the auth and rate-limit refusals below it) into statuses;
        # auth decides who is calling; the rate limit is charged to that principal; the text policy
        # checks every string of the request, before the handler. Deadlines need no stage: grpc.aio
        # cancels the handler's task when the caller's deadline passes, which cancels the pending
        # database statement on the server and any Redis call (tests/integration/test_concurrency.py).
        # A second, home-made timeout would cancel the task twice and break that clean-up.
        limiter = _rate_limiter(settings, metrics, client)
        interceptors = [
            Pipeline(
                tracing=TracingStage(tracer),
                observability=ObservabilityStage(metrics),
                errors=ErrorStage(),
                auth=AuthStage(
                    policies,
                    components.verifier,
                    session_is_live=components.sessions.is_live,
                    on_failure=metrics.auth_failed,
                ),
                rate_limit=RateLimitStage(limiter, policies.rate, gateway_proof=gateway_proof),
                text_policy=check_request,
            )
        ]
        server = grpc.aio.server(
            interceptors=interceptors, options=server_options(settings, reuse_port=reuse_port)
        )
        for module in components.modules:
            module.register(server, components.services[module.name])
        health_servicer = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection((*components.service_names(), health.SERVICE_NAME), server)
        port = _bind_grpc(server, settings.grpc_addr)
        interval = settings.idempotency_purge_interval_seconds
        purger = (
            ExpiredKeyPurger(components.platform.writers, components.clock, interval) if interval else None
        )
        usage_upkeep = _usage_upkeep(components)
        readiness = Readiness(health_servicer, components.service_names(), metrics)
        # The REST face calls this very server over gRPC, so it passes the same interceptor chain.
        # A worker of `--workers N` gives its gateway a private loopback port of its own gRPC server:
        # on the shared port the kernel would hand the channel's one connection to any worker, so
        # every worker's REST calls could end up on one of them.
        own_port = _bind_grpc(server, _loopback(settings.grpc_addr, 0)) if reuse_port else port
        gateway_channel = grpc.aio.insecure_channel(_loopback(settings.grpc_addr, own_port))
        http = HttpServer(
            settings.http_addr,
            metrics=metrics,
            jwks=components.keyring.jwks,
            health=readiness.check,
            shutdown_timeout=settings.shutdown_grace_seconds,
            reuse_port=reuse_port,
            routes=gateway_routes(
                services,
                gateway_channel,
                strict=settings.gateway_strict,
                cors_origins=settings.cors_origins,
                max_body_bytes=settings.gateway_max_body_bytes,
                use_proto_names=settings.gateway_proto_names,
                forwarding=ClientForwarding(tuple(settings.trusted_proxies), gateway_proof),
                max_timeout_seconds=settings.gateway_max_timeout_seconds,
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
        limiter=limiter,
        gateway_channel=gateway_channel,
        port=port,
        policies=policies,
        readiness=readiness,
        purger=purger,
        usage_upkeep=usage_upkeep,
        webhooks=webhook_deliverer(components, metrics),
        billing_worker=billing_worker(components, metrics) if components.settings.billing_worker else None,
        collection_worker=(
            collection_worker(components, metrics) if components.settings.collection_worker else None
        ),
        payment_reconciler=payment_reconciler(components) if components.settings.payment_reconciler else None,
    )


def process_metrics(components: Components) -> Metrics:
    """The process's metrics, with what the shared parts report wired in: the connection pool, the
    read cache, and billing's usage outcomes, payment gateways' circuit breakers and inbound gateway
    events. `build()` and `tally worker` both start from it; the jobs are handed it as they are made."""
    metrics = Metrics()
    metrics.watch_pool(components.engine)
    if components.cache is not None:
        components.cache.report_to(metrics)
    billing = components.services.get("billing")
    if isinstance(billing, BillingServices):
        billing.usage.outcomes.report_to(metrics.usage_recorded)
        billing.payments.gateways.report_to(metrics.registry)  # the circuit breakers' states
        billing.gateway_events.report_to(metrics.gateway_event)
    return metrics


async def serve_worker_metrics(settings: Settings, metrics: Metrics) -> HttpServer | None:
    """`tally worker`'s /metrics on TALLY_WORKER_METRICS_ADDR, started (None when the setting is
    empty): the HTTP server of `tally serve` with none of its other routes, so that the worker's
    jobs are scraped as the server's are. The bound address is logged, for a port 0 bind."""
    address = settings.worker_metrics_addr
    if not address:
        return None
    http = HttpServer(address, metrics=metrics, shutdown_timeout=settings.shutdown_grace_seconds)
    try:
        await http.start()
    except OSError as exc:
        raise ListenError.of("TALLY_WORKER_METRICS_ADDR", address, exc) from exc
    bound = _listen_address(address, http.port)
    log.info("worker metrics on http://%s/metrics", bound, extra={"metrics_addr": bound})
    return http


def _usage_upkeep(components: Components) -> UsageUpkeep | None:
    """The usage tables' periodic upkeep, when the billing module is served and it is not disabled."""
    interval = components.settings.usage_upkeep_interval_seconds
    billing = components.services.get("billing")
    if not interval or not isinstance(billing, BillingServices):
        return None
    return UsageUpkeep(components.engine, billing.usage.new_uow, components.clock, interval)


def billing_worker(components: Components, metrics: Metrics | None = None) -> BillingWorker | None:
    """The billing worker on the wall clock, when the billing module is served."""
    billing = components.services.get("billing")
    if not isinstance(billing, BillingServices):
        return None
    return BillingWorker(
        billing.new_billing_uow,
        billing.billing_work,
        components.clock,
        interval_seconds=components.settings.billing_worker_interval_seconds,
        on_work=metrics.billing_work_done if metrics is not None else lambda kind, count: None,
        finalize=billing.billing_work.finalize_due_draft,
    )


def collection_worker(components: Components, metrics: Metrics | None = None) -> CollectionWorker | None:
    """The collection worker on the wall clock, when the billing module is served."""
    billing = components.services.get("billing")
    if not isinstance(billing, BillingServices):
        return None
    return CollectionWorker(
        billing.new_billing_uow,
        billing.collector,
        billing.dunning,
        components.clock,
        interval_seconds=components.settings.collection_worker_interval_seconds,
        on_outcome=metrics.collection_done if metrics is not None else lambda outcome: None,
    )


def payment_reconciler(components: Components) -> PaymentReconciler | None:
    """The payment reconciler on the wall clock, when the billing module is served."""
    billing = components.services.get("billing")
    if not isinstance(billing, BillingServices):
        return None
    return PaymentReconciler(
        billing.payments, interval_seconds=components.settings.payment_reconciler_interval_seconds
    )


def webhook_deliverer(components: Components, metrics: Metrics | None = None) -> WebhookDeliverer | None:
    """Webhook delivery on the wall clock (`tally serve` and `tally worker`), when the billing
    module is served and TALLY_WEBHOOK_DELIVERY is on."""
    settings = components.settings
    if not settings.webhook_delivery or "billing" not in components.services:
        return None
    return WebhookDeliverer(
        components.platform.writers,
        components.clock,
        components.platform.server_key.sealer(SEALING_PURPOSE),
        interval_seconds=settings.webhook_delivery_interval_seconds,
        allow_private_targets=settings.webhook_allow_private_targets,
        on_outcome=metrics.webhook_delivered if metrics is not None else lambda outcome: None,
        on_backlog=metrics.webhook_backlog if metrics is not None else None,
    )


def _bind_grpc(server: grpc.aio.Server, address: str) -> int:
    # grpc.aio reports a failed bind as a bare RuntimeError (C-core logs the errno itself).
    try:
        port: int = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ListenError("TALLY_GRPC_ADDR", address, "the address is in use or not on this host") from exc
    return port


def _loopback(grpc_addr: str, port: int) -> str:
    """Where this process reaches its own gRPC port (a wildcard bind is reached on loopback)."""
    host = grpc_addr.rpartition(":")[0]
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"{host}:{port}"


def _listen_address(address: str, port: int) -> str:
    return f"{address.rpartition(':')[0]}:{port}"


async def serve(settings: Settings, *, ready_fd: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT. `ready_fd` set: this is a worker of `tally serve --workers N`
    (app/supervisor.py): the ports are shared (SO_REUSEPORT; the supervisor checked them and holds
    them), one byte on `ready_fd` says it serves, and it stops when the supervisor goes away."""
    worker = ready_fd is not None
    if not worker:
        # Both addresses first: a busy port is refused before the database is migrated or keys made.
        check_can_listen("TALLY_GRPC_ADDR", settings.grpc_addr)
        check_can_listen("TALLY_HTTP_ADDR", settings.http_addr)
    app = await build(settings, reuse_port=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    _freeze_startup_heap()
    grpc_addr = _listen_address(settings.grpc_addr, app.port)
    http_addr = _listen_address(settings.http_addr, app.http_port)
    where = {"grpc_addr": grpc_addr, "http_addr": http_addr, "data_dir": str(Path(settings.data_dir))}
    orphaned: asyncio.Task[None] | None = None
    if ready_fd is not None:
        log.info(
            "worker %d serving gRPC on %s and HTTP on %s", os.getpid(), grpc_addr, http_addr, extra=where
        )
        os.write(ready_fd, b"1")
        os.close(ready_fd)
        orphaned = asyncio.create_task(_stop_when_orphaned(os.getppid(), stop), name="supervisor-watch")
    else:
        log.info(
            "tally serving gRPC on %s and HTTP on %s (database: %s; rate limits: %s)",
            grpc_addr,
            http_addr,
            settings.describe_database(),
            "Redis" if settings.redis_url else "in-process",
            extra=where,
        )
    await stop.wait()
    if orphaned is not None:
        orphaned.cancel()
    await drain(app, settings.shutdown_drain_seconds, stop)
    log.info("shutting down: finishing in-flight calls (up to %g s)", settings.shutdown_grace_seconds)
    await app.stop()
    log.info("stopped")


def _freeze_startup_heap() -> None:
    """Move what start-up made (modules, descriptors, table metadata, the app) out of the garbage
    collector's sight: it lives as long as the process, and a full collection would otherwise walk
    all of it again each time the calls' short-lived objects pile up (gc.freeze)."""
    gc.collect()
    gc.freeze()


async def _stop_when_orphaned(supervisor: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL, no forwarding) stops as if signalled."""
    while os.getppid() == supervisor:  # noqa: ASYNC110 (no event to wait for: polling the parent)
        await asyncio.sleep(1.0)
    log.warning("the supervisor (pid %d) is gone: stopping", supervisor)
    stop.set()


async def drain(app: App, seconds: float, signalled: asyncio.Event) -> None:
    """NOT_SERVING for `seconds` while still serving; a second signal ends the drain early."""
    await app.drain()
    if not seconds:
        return
    log.info("draining: health reports NOT_SERVING for %g s while calls are still served", seconds)
    signalled.clear()
    try:
        await asyncio.wait_for(signalled.wait(), seconds)
    except TimeoutError:
        return
    log.info("second signal: ending the drain early")

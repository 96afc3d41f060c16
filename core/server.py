"""The composition root: builds every part from one Settings object and runs the server.

Nothing is connected at import time; `build()` wires a server that tests can
start on port 0, and `serve()` adds signal handling and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc.servicer import AccountServicer
from account_svc.unit_of_work import SqlAccountsUnitOfWork
from account_svc.use_cases import AccountDeps
from core import db, migrate
from core.clock import Clock, SystemClock
from core.pagination import PageTokens
from core.settings import Settings
from interceptors.errors import ErrorMappingInterceptor
from tally.account.v1 import account_pb2, account_pb2_grpc

log = logging.getLogger("tally.server")

SERVICE_NAMES = (account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name,)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Deliberate transport limits: message size, streams, keepalive and connection age."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
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
class App:
    settings: Settings
    engine: AsyncEngine
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish within the grace period, then close the pool."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        await self.engine.dispose()


async def prepare_database(settings: Settings, engine: AsyncEngine) -> None:
    if settings.should_migrate_on_start:
        before, after = await migrate.upgrade(engine)
        if before != after:
            log.info("database migrated from %s to %s", before or "empty", after)
    else:
        await migrate.check_current(engine)


async def build(settings: Settings, *, clock: Clock | None = None) -> App:
    engine = db.create_engine(settings)
    try:
        await prepare_database(settings, engine)
        writers = db.session_factory(engine)
        readers = db.session_factory(db.read_only(engine))
        deps = AccountDeps(
            new_uow=lambda: SqlAccountsUnitOfWork(writers),
            new_reader=lambda: SqlAccountsUnitOfWork(readers),
            clock=clock or SystemClock(),
            page_tokens=PageTokens(page_token_secret(settings)),
        )
        server = grpc.aio.server(
            interceptors=[ErrorMappingInterceptor()],
            options=server_options(settings),
        )
        account_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(deps), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = server.add_insecure_port(settings.grpc_addr)
    except BaseException:
        await engine.dispose()
        raise
    return App(settings, engine, server, health_servicer, port)


def _listen_address(settings: Settings, port: int) -> str:
    host = settings.grpc_addr.rpartition(":")[0]
    return f"{host}:{port}"


async def serve(settings: Settings) -> None:
    app = await build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    log.info(
        "tally serving gRPC on %s (database: %s)",
        _listen_address(settings, app.port),
        settings.describe_database(),
        extra={"grpc_addr": _listen_address(settings, app.port), "data_dir": str(Path(settings.data_dir))},
    )
    await stop.wait()
    log.info("shutting down: finishing in-flight calls (up to %.0f s)", settings.shutdown_grace_seconds)
    await app.stop()
    log.info("stopped")

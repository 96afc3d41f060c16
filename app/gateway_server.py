"""`tally gateway --target HOST:PORT`: the REST gateway alone, in front of a remote gRPC server.

It is the same HttpServer as `tally serve`'s HTTP side (app.http), so it answers the same
way: `/healthz` for a load balancer, `/metrics` (HTTP requests by route and status),
`/openapi.json`, and every error as google.rpc.Status JSON. It holds no keys, so it serves
no JWKS. `/healthz` is SERVING while the target answers grpc.health.v1 Check with SERVING;
the answer is kept for `TargetHealth.ttl` seconds, so a load balancer polling every replica
often costs the target one check per interval, not one per poll.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.http import HttpServer
from app.modules import SERVICES
from core.forwarding import ClientForwarding, GatewayProof
from core.metrics import Metrics
from core.settings import ListenError, Settings
from gateway.app import gateway_routes

log = logging.getLogger("tally.gateway")

HEALTH_TTL_SECONDS = 1.0
HEALTH_TIMEOUT_SECONDS = 1.0


class TargetHealth:
    """Whether the gRPC target serves, from its health service; one check at a time, kept `ttl` s."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        ttl: float = HEALTH_TTL_SECONDS,
        timeout: float = HEALTH_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._known: tuple[float, bool] | None = None  # (when checked, serving)
        self._pending: asyncio.Task[bool] | None = None

    async def check(self) -> bool:
        known = self._known
        if known is not None and self._clock() - known[0] < self._ttl:
            return known[1]
        if self._pending is None:
            # Concurrent polls share the one call in flight; shielded, so a poll that gives up
            # (its client went away) does not cancel the others' answer.
            self._pending = asyncio.ensure_future(self._ask())
            self._pending.add_done_callback(self._forget)
        return await asyncio.shield(self._pending)

    def _forget(self, _task: asyncio.Task[bool]) -> None:
        self._pending = None

    async def _ask(self) -> bool:
        try:
            reply = await self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self._timeout)
            serving = bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.aio.AioRpcError as error:
            log.warning("the gRPC target fails its health check: %s: %s", error.code().name, error.details())
            serving = False
        self._known = (self._clock(), serving)
        return serving


def standalone_forwarding(settings: Settings) -> ClientForwarding:
    """Proofs under the secret shared with the server; without one the server keys this gateway's
    anonymous callers by the gateway's address, as it would any other caller."""
    shared = settings.gateway_secret
    proof = GatewayProof(shared.get_secret_value().encode()) if shared else None
    if proof is None:
        log.warning(
            "TALLY_GATEWAY_SECRET is unset: the gRPC server rate-limits every anonymous REST caller "
            "of this gateway as one (the gateway's address)"
        )
    return ClientForwarding(tuple(settings.trusted_proxies), proof)


class StandaloneGateway:
    """The HTTP server and the channel to the target; `start()`, then `stop()`."""

    def __init__(self, settings: Settings, target: str, *, health_ttl: float = HEALTH_TTL_SECONDS) -> None:
        self.settings = settings
        self.target = target
        self.channel = grpc.aio.insecure_channel(target)
        self.metrics = Metrics()
        self.health = TargetHealth(self.channel, ttl=health_ttl)
        self.http = HttpServer(
            settings.http_addr,
            metrics=self.metrics,
            health=self.health.check,
            routes=gateway_routes(
                SERVICES,
                self.channel,
                strict=settings.gateway_strict,
                cors_origins=settings.cors_origins,
                max_body_bytes=settings.gateway_max_body_bytes,
                use_proto_names=settings.gateway_proto_names,
                forwarding=standalone_forwarding(settings),
                max_timeout_seconds=settings.gateway_max_timeout_seconds,
            ),
        )

    @property
    def port(self) -> int:
        return self.http.port

    async def start(self) -> None:
        try:
            await self.http.start()
        except OSError as exc:
            await self.channel.close()
            raise ListenError("TALLY_HTTP_ADDR", self.settings.http_addr, exc.strerror or str(exc)) from exc

    async def stop(self) -> None:
        await self.http.stop()
        await self.channel.close()


async def serve_gateway(settings: Settings, target: str, *, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (without one, until SIGTERM or SIGINT)."""
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    gateway = StandaloneGateway(settings, target)
    await gateway.start()
    try:
        http_addr = f"{settings.http_addr.rpartition(':')[0]}:{gateway.port}"
        log.info("tally gateway on %s, calling gRPC at %s", http_addr, target, extra={"http_addr": http_addr})
        await stop.wait()
    finally:
        await gateway.stop()

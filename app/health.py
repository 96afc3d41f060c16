"""Whether this process should get traffic, said the same way by gRPC health, HTTP and metrics.

Ready means: started, not draining for a shutdown, and the database answering. `Readiness`
holds those three facts and publishes every change to the gRPC health service (the overall
"" entry and every service, all alike: each one needs the database), to `/readyz` and
`/healthz` (through `check`) and to the `tally_ready` gauge. Liveness (`/livez`) is not
here: the HTTP side answering at all is the proof that the event loop runs.

`DatabaseProbe` is the background check of `tally serve`: a `SELECT 1` on a connection of its
own (so a busy pool does not read as an outage), bounded by `PROBE_TIMEOUT_SECONDS`, every
interval of real time (asyncio's clock: a frozen test clock does not stop it).
`FAILURES_TO_UNREADY` failures in a row make the process unready, so one slow answer does
not take a replica out of rotation; the first success makes it ready again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from core.metrics import Metrics
from core.settings import Settings

log = logging.getLogger("tally.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROBE_TIMEOUT_SECONDS = 1.0
FAILURES_TO_UNREADY = 2


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health ships no types
    """grpc's asyncio health service, plus List: grpcio-health-checking declares it in the proto but
    its servicer inherits the generated synchronous stub, which grpc.aio cannot serve."""

    def __init__(self) -> None:
        super().__init__()
        # grpc's servicer starts SERVING; ours waits for Readiness.started().
        self._server_status[""] = NOT_SERVING

    async def List(
        self, _request: health_pb2.HealthListRequest, _context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        # `_server_status` is where the servicer keeps what Check answers (tests/e2e/test_health.py
        # fails if a grpcio-health-checking release moves it).
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)


class Readiness:
    """Started, not draining, database up: the one place that decides and says whether we serve."""

    def __init__(self, service: HealthService, names: tuple[str, ...], metrics: Metrics) -> None:
        self._service = service
        self._names = ("", *names)
        self._metrics = metrics
        self._started = False
        self._draining = False
        self._database_up = True
        self._publishing = asyncio.Lock()
        metrics.set_ready(False)

    @property
    def ready(self) -> bool:
        return self._started and not self._draining and self._database_up

    @property
    def draining(self) -> bool:
        return self._draining

    async def check(self) -> bool:
        """For the HTTP side's /readyz and /healthz."""
        return self.ready

    async def started(self) -> None:
        self._started = True
        await self._publish()

    async def drain(self) -> None:
        """NOT_SERVING from now on, whatever the database does (idempotent)."""
        if self._draining:
            return
        self._draining = True
        await self._publish()
        await self._service.enter_graceful_shutdown()

    async def database(self, up: bool) -> None:
        if up != self._database_up:
            self._database_up = up
            await self._publish()

    async def _publish(self) -> None:
        # One publication at a time, each of the state as it is when it runs: the last one wins.
        async with self._publishing:
            ready = self.ready
            for name in self._names:
                await self._service.set(name, SERVING if ready else NOT_SERVING)
            self._metrics.set_ready(ready)


def probe_engine(settings: Settings) -> AsyncEngine:
    """A connection for the probe alone. PostgreSQL keeps one open (re-made after a failure);
    SQLite opens its file per probe, which costs nothing."""
    url = settings.effective_database_url
    if settings.is_sqlite:
        return create_async_engine(url, poolclass=NullPool)
    return create_async_engine(
        url, pool_size=1, max_overflow=0, connect_args={"timeout": PROBE_TIMEOUT_SECONDS}
    )


class DatabaseProbe:
    """`SELECT 1` every `interval` seconds; tells `on_change` when the database goes and comes back."""

    def __init__(
        self,
        engine: AsyncEngine,
        interval: float,
        on_change: Callable[[bool], Awaitable[None]],
        *,
        timeout: float = PROBE_TIMEOUT_SECONDS,
        failures_to_unready: int = FAILURES_TO_UNREADY,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._engine = engine
        self._interval = interval
        self._on_change = on_change
        self._timeout = timeout
        self._failures_to_unready = failures_to_unready
        self.up = True
        self._failures = 0

    async def run(self) -> None:
        """Probe until cancelled; the engine is closed on the way out."""
        try:
            while True:
                await self.probe_once()
                await asyncio.sleep(self._interval)
        finally:
            await asyncio.shield(self._engine.dispose())

    async def probe_once(self) -> None:
        error = await self._select_one()
        if error is None:
            self._failures = 0
            if not self.up:
                log.info("the database answers again: ready")
                await self._change(True)
            return
        self._failures += 1
        if self.up and self._failures >= self._failures_to_unready:
            log.warning(
                "the database does not answer (%d checks in a row, last: %s): not ready",
                self._failures,
                error,
            )
            await self._change(False)

    async def _change(self, up: bool) -> None:
        self.up = up
        await self._on_change(up)

    async def _select_one(self) -> str | None:
        """None when the database answered, else why not (one short line, for the log)."""
        try:
            async with asyncio.timeout(self._timeout), self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except TimeoutError:
            await self._forget_connection()
            return f"no answer within {self._timeout:g} s"
        except Exception as exc:
            await self._forget_connection()
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return None

    async def _forget_connection(self) -> None:
        # A connection interrupted mid-statement may be unusable; the next probe makes a new one.
        try:
            await self._engine.dispose()
        except Exception:
            log.debug("closing the probe's connection failed", exc_info=True)

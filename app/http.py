"""The HTTP side: /metrics, /.well-known/jwks.json and /healthz on one aiohttp server.

The REST gateway's routes come in through `routes=`. aiohttp's access log goes
to the `tally.http` logger at DEBUG (method, path without the query string,
status, duration); gRPC calls have their own access log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from core.metrics import CONTENT_TYPE, Metrics
from core.settings import parse_host_port
from gateway.app import MAX_REQUEST_LINE_BYTES

log = logging.getLogger("tally.http")

JWKS_CACHE_CONTROL = "public, max-age=300"


class HttpServer:
    def __init__(
        self,
        addr: str,
        *,
        metrics: Metrics,
        jwks: Callable[[], dict[str, Any]],
        health: Callable[[], Awaitable[bool]] | None = None,
        routes: Iterable[web.AbstractRouteDef] = (),
        shutdown_timeout: float = 5.0,
    ) -> None:
        """`addr` is HOST:PORT (port 0 picks a free one); `health` None means healthy while running."""
        host, port = parse_host_port(addr)
        self._host = host.removeprefix("[").removesuffix("]")
        self._port = port
        self._metrics = metrics
        self._jwks = jwks
        self._health = health
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/metrics", self._get_metrics),
                web.get("/.well-known/jwks.json", self._get_jwks),
                web.get("/healthz", self._get_health),
            ]
        )
        self.app.add_routes(list(routes))

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); only after `start()`."""
        if self._bound_port is None:
            raise RuntimeError("HttpServer is not started")
        return self._bound_port

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("HttpServer already started")
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log_class=_AccessLog,
            access_log=log,
            shutdown_timeout=self._shutdown_timeout,
            max_line_size=MAX_REQUEST_LINE_BYTES,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, reuse_port=False)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and finish in-flight requests (up to `shutdown_timeout`); idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _get_jwks(self, _request: web.Request) -> web.Response:
        return web.json_response(self._jwks(), headers={"Cache-Control": JWKS_CACHE_CONTROL})

    async def _get_health(self, _request: web.Request) -> web.Response:
        serving = True
        if self._health is not None:
            try:
                serving = await self._health()
            except Exception:
                log.warning("health check failed", exc_info=True)
                serving = False
        return web.json_response(
            {"status": "SERVING" if serving else "NOT_SERVING"},
            status=200 if serving else 503,
            headers={"Cache-Control": "no-store"},
        )


class _AccessLog(AbstractAccessLogger):
    """aiohttp's access log at DEBUG, structured; the query string is left out (it may hold secrets)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.debug(
            "http",
            extra={
                "http_method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "remote": request.remote,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

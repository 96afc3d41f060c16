"""The HTTP side: /metrics, /.well-known/jwks.json and the health endpoints on one aiohttp server.

Health, as Kubernetes probes it: `/livez` is 200 whenever the server answers at all (the event
loop runs; restart the process when it does not); `/readyz` is 200 while `health` says the
process takes traffic and 503 otherwise (draining for a shutdown, the database unreachable);
`/healthz` is `/readyz` under its older name, kept for load balancers configured with it.

The REST gateway's routes come in through `routes=`. aiohttp's access log goes
to the `tally.http` logger at DEBUG (method, path without the query string,
status, duration); gRPC calls have their own access log.

Every answer of the port carries `X-Request-Id` (the caller's if sane, else a new one),
every error is the google.rpc.Status JSON with an ErrorInfo (gateway.errors), and every
answer is counted in `tally_http_requests_total` by route template and status:

* routed requests, the router's own 404 and 405, a body that cannot be read, and anything a
  handler raises: the `_Edge` middleware (an unexpected exception is logged with its
  traceback and answered as a bare INTERNAL);
* a request aiohttp cannot parse (a NUL byte in a header, a line or header block past the
  limits), found before any routing: `_Protocol.handle_error`, one WARNING line, and a 400
  (431 for sizes) when the connection still allows an answer; a bad chunk in a body being
  read is handed to that body (`_Protocol.data_received`), so its handler answers 400.

aiohttp has no public hook for these: `_Runner` and `_Server` put `_Protocol` in place of
its RequestHandler (tests/integration/test_gateway_edge.py fails if an upgrade breaks that).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from core.metrics import CONTENT_TYPE, Metrics
from core.request_context import new_request_id
from core.settings import parse_host_port
from core.status import internal_status
from gateway.app import MAX_REQUEST_LINE_BYTES, REQUEST_ID_KEY, ROUTE_KEY, UNMATCHED
from gateway.errors import GatewayError, error_response

log = logging.getLogger("tally.http")

JWKS_CACHE_CONTROL = "public, max-age=300"
# Metric labels come from fixed sets: a caller may send any token as the method.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MALFORMED_ROUTE = "(malformed)"
_QUOTED_BYTES = re.compile(r":?\s*(?:b'|b\"|bytearray\()")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    def __init__(
        self,
        addr: str,
        *,
        metrics: Metrics,
        jwks: Callable[[], dict[str, Any]] | None = None,
        health: Callable[[], Awaitable[bool]] | None = None,
        routes: Iterable[web.AbstractRouteDef] = (),
        shutdown_timeout: float = 5.0,
        reuse_port: bool = False,
    ) -> None:
        """`addr` is HOST:PORT (port 0 picks a free one); `health` None means healthy while running;
        `jwks` None serves no /.well-known/jwks.json (a stand-alone gateway holds no keys)."""
        host, port = parse_host_port(addr)
        self._host = host.removeprefix("[").removesuffix("]")
        self._port = port
        self._metrics = metrics
        self._jwks = jwks
        self._health = health
        self._shutdown_timeout = shutdown_timeout
        self._reuse_port = reuse_port
        self._runner: _Runner | None = None
        self._bound_port: int | None = None
        self.app = web.Application(middlewares=[_Edge(metrics)])
        self.app.add_routes(
            [
                web.get("/metrics", self._get_metrics),
                web.get("/livez", self._get_liveness),
                web.get("/readyz", self._get_readiness),
                web.get("/healthz", self._get_readiness),
            ]
        )
        if jwks is not None:
            self.app.add_routes([web.get("/.well-known/jwks.json", self._get_jwks)])
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
        runner = _Runner(
            self.app,
            self._metrics,
            handle_signals=False,
            access_log_class=_AccessLog,
            access_log=log,
            logger=log,
            shutdown_timeout=self._shutdown_timeout,
            max_line_size=MAX_REQUEST_LINE_BYTES,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, reuse_port=self._reuse_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening and finish in-flight requests (up to `grace` seconds, else
        `shutdown_timeout`); idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            if grace is not None:
                runner.shutdown_timeout = grace
            await runner.cleanup()

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        # The pid tells which process answered: with `tally serve --workers N` each worker has its own
        # counters, and the kernel hands each connection to one of them.
        headers = {"Content-Type": CONTENT_TYPE, "X-Tally-Pid": str(os.getpid())}
        return web.Response(body=self._metrics.render(), headers=headers)

    async def _get_jwks(self, _request: web.Request) -> web.Response:
        assert self._jwks is not None  # the route exists only with jwks
        return web.json_response(self._jwks(), headers={"Cache-Control": JWKS_CACHE_CONTROL})

    async def _get_liveness(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"}, headers={"Cache-Control": "no-store"})

    async def _get_readiness(self, _request: web.Request) -> web.Response:
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


def method_label(method: str) -> str:
    return method if method in _METHODS else "OTHER"


class _Edge:
    """The middleware around every routed request: request id, errors as Status JSON, metrics."""

    __middleware_version__ = 1  # aiohttp's marker for a new-style middleware

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        request_id = new_request_id(request.headers.get("X-Request-Id"))
        request[REQUEST_ID_KEY] = request_id
        started = time.perf_counter()
        try:
            response = await self._answer(request, handler, request_id)
        finally:
            self._metrics.http_finished(
                method_label(request.method),
                _route_label(request),
                _status_of(request),
                time.perf_counter() - started,
            )
        return response

    async def _answer(self, request: web.Request, handler: _Handler, request_id: str) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect or a bare success: aiohttp sends it as it is
                exc.headers.setdefault("X-Request-Id", request_id)
                request[_STATUS_KEY] = exc.status
                raise
            response = GatewayError.from_http_exception(
                exc, request.method, request.rel_url.raw_path
            ).response(request_id)
        except web.RequestPayloadError as exc:
            log.warning(
                "unreadable request body from %s: %s",
                request.remote,
                _first_line(exc),
                extra={"request_id": request_id},
            )
            response = GatewayError.malformed(_what_is_malformed(exc.__cause__ or exc)).response(request_id)
            response.force_close()
        except ConnectionError:
            raise  # the client went away; aiohttp closes quietly
        except Exception:
            log.exception(
                "unexpected error answering %s %s",
                request.method,
                request.path,
                extra={"request_id": request_id},
            )
            response = error_response(internal_status(), 500, {"X-Request-Id": request_id})
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", request_id)
        request[_STATUS_KEY] = response.status
        return response


_STATUS_KEY = web.RequestKey("tally_http_status", int)


def _status_of(request: web.Request) -> int:
    # Not set: no answer was made, because the client went away first (nginx's 499).
    return int(request.get(_STATUS_KEY, 499))


def _route_label(request: web.Request) -> str:
    """The gateway's route template, else the aiohttp resource's, else UNMATCHED (never the raw path)."""
    route = request.get(ROUTE_KEY)
    if route is not None:
        return str(route)
    match = request.match_info
    if match.http_exception is not None:
        return UNMATCHED
    return match.route.resource.canonical if match.route.resource is not None else UNMATCHED


def _first_line(exc: BaseException) -> str:
    """The parser's complaint for the log, without the request bytes it quotes (a header may be a
    credential): its later lines echo them, and so does the tail of a LineTooLong."""
    if not isinstance(exc, HttpProcessingError) and isinstance(exc.__cause__, HttpProcessingError):
        exc = exc.__cause__  # a RequestPayloadError wraps what the payload parser raised
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = _QUOTED_BYTES.split(first, maxsplit=1)[0].rstrip(": .")
    return first[:200] or type(exc).__name__


def _what_is_malformed(exc: BaseException) -> str:
    """Which part of the request the parser refused, in the caller's terms."""
    if isinstance(exc, BadStatusLine | BadHttpMethod):
        return "the request line is not HTTP/1.x"
    if isinstance(exc, InvalidURLError):
        return "the request target is not a valid URL"
    if isinstance(exc, ContentEncodingError):
        return "the body cannot be decoded with its Content-Encoding"
    if isinstance(exc, ContentLengthError):
        return "the body does not match its Content-Length"
    if isinstance(exc, TransferEncodingError):
        return "the chunked transfer encoding of the body is invalid"
    text = _first_line(exc).lower()
    if "content-length" in text:
        return "the Content-Length header is invalid"
    if "chunk" in text or "transfer-encoding" in text:
        return "the chunked transfer encoding of the body is invalid"
    if "host" in text:
        return "the Host header is missing or invalid"
    if "header" in text:
        return "a header has a character HTTP does not allow, or appears twice where it may appear once"
    return "the request is not valid HTTP/1.1"


class _Protocol(RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse as Status JSON in one log line."""

    __slots__ = ("_metrics",)

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._metrics = manager.metrics

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        request_id = new_request_id(request.headers.get("X-Request-Id"))
        extra = {"request_id": request_id}
        if isinstance(exc, HttpProcessingError):
            level = logging.DEBUG if self._is_not_http(exc) else logging.WARNING
            log.log(
                level, "malformed HTTP request from %s: %s", request.remote, _first_line(exc), extra=extra
            )
            error = self._malformed(exc)
            body, http, headers = error.status(), error.http, error.headers
        elif isinstance(exc, ConnectionError):  # the client went away; this answer will not reach it
            log.debug("client %s went away", request.remote, extra=extra)
            body, http, headers = internal_status(), 500, {}
        elif status == 504:  # a handler's own timeout escaped it (aiohttp's convention: 504)
            log.warning("request from %s timed out in its handler", request.remote, extra=extra)
            body, http, headers = GatewayError.deadline().status(), 504, {}
        else:
            log.error(
                "unexpected error answering a request from %s", request.remote, exc_info=exc, extra=extra
            )
            body, http, headers = internal_status(), 500, {}
        if request.writer.output_size > 0:  # the answer had begun: the connection is beyond saving
            raise ConnectionError("the answer was already being sent")
        self._metrics.http_finished(method_label(request.method), MALFORMED_ROUTE, http, 0.0)
        response = error_response(body, http, {**headers, "X-Request-Id": request_id})
        response.force_close()
        return response

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) == queued or not isinstance(self._messages[-1][0], _ErrInfo):
            return
        # A parse error inside a body whose headers came earlier (a bad chunk): aiohttp files it
        # as the next request, and the handler reading the body would wait for the rest of it
        # until the client hangs up. Hand the error to that body instead, answered as a 400.
        failure = self._messages[-1][0].exc
        bodies = [message[1] for message in self._messages if not isinstance(message[0], _ErrInfo)]
        if self._current_request is not None:
            bodies.append(self._current_request.content)
        for body in bodies:
            if not body.is_eof():
                error = web.RequestPayloadError(str(failure))
                error.__cause__ = failure
                body.set_exception(error)

    def _is_not_http(self, exc: HttpProcessingError) -> bool:
        # TLS or a port scanner on the plain port, as the connection's first bytes: aiohttp logs
        # that at DEBUG too, since an open port sees it all day.
        return isinstance(exc, BadHttpMethod) and self._request_count == 1

    def _malformed(self, exc: HttpProcessingError) -> GatewayError:
        if isinstance(exc, LineTooLong) or "too many headers" in exc.message.lower():
            return GatewayError.headers_too_large(self.max_line_size, self.max_field_size, self.max_headers)
        return GatewayError.malformed(_what_is_malformed(exc))

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp logs here with a traceback whatever the cause; a client's broken request (or its
        # unreadable body, met again while draining it) was already answered and logged once.
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError | web.RequestPayloadError | ConnectionError):
            self.logger.debug("%s: %s", args[0] if args else "connection", _first_line(exc))
            return
        super().log_exception(*args, **kw)


class _Server(Server):
    """aiohttp's low-level server with `_Protocol` for each connection."""

    def __init__(self, made: Server, metrics: Metrics) -> None:
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )
        self.metrics = metrics

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """An AppRunner whose server answers unparseable requests as JSON (aiohttp has no public hook)."""

    def __init__(self, app: web.Application, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._metrics = metrics

    @property
    def shutdown_timeout(self) -> float:
        """How long `cleanup()` lets in-flight requests run; settable up to the stop (App.stop's grace)."""
        return float(self._shutdown_timeout)

    @shutdown_timeout.setter
    def shutdown_timeout(self, seconds: float) -> None:
        self._shutdown_timeout = seconds

    async def _make_server(self) -> Server:
        return _Server(await super()._make_server(), self._metrics)


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

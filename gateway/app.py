"""The gateway on aiohttp: routes every `google.api.http` binding to the gRPC server through a channel.

Served by app.http.HttpServer, in `tally serve` and in the stand-alone `tally gateway`
(app/gateway_server.py), whose middleware gives every answer of the port, not only these,
an `X-Request-Id` and a google.rpc.Status JSON body when it is an error.

Calls go through a `grpc.aio.Channel` to the real gRPC server, so auth, rate
limits, tracing and error mapping apply exactly as for gRPC callers. Headers:

* in: `Authorization`, `traceparent`, `tracestate`, `Stripe-Signature` and `X-Request-Id` pass as
  gRPC metadata; `Grpc-Metadata-<name>` becomes metadata `<name>`; `Idempotency-Key` (else
  `X-Request-Id`) fills an empty `request_id` field; `Grpc-Timeout` (`5S`, `200m`) or
  `Request-Timeout` (seconds) becomes the call deadline, cut to `max_timeout_seconds`; the
  client's address (its `X-Forwarded-For` only behind a trusted proxy) goes with the gateway's
  proof of it (core.forwarding), and no caller can send either name. A passed-on value must be
  printable ASCII (gRPC's rule), else 400 naming the header; more than
  MAX_FORWARDED_HEADER_BYTES of them is 431. Both are checked before any call is made;
* out: `X-Request-Id` on every answer (the caller's, else a new one); response header and
  trailing metadata as `Grpc-Metadata-<name>`; `Retry-After` on 429 and 503; `WWW-Authenticate`
  on 401. A call that failed in transport (the server down, no Status from it) is answered in
  our words (gateway.errors.status_from_rpc_error); the library's text, which names addresses,
  is logged.

Server-streaming methods answer NDJSON (`{"result": ...}` per message), or server-sent
events with `Accept: text/event-stream`; an error mid-stream is a last `{"error": status}`.

A method whose request is a `google.api.HttpBody` bound whole (`body: "*"`) takes the body unparsed,
as its `data`, with the Content-Type as its `content_type` (Stripe's webhooks: the signature is over
the bytes as sent).

Client-streaming methods take a newline-delimited JSON body (`application/x-ndjson`, or
`application/json` with one object per line; blank lines ignored), one request message
per line, read whole (within `max_body_bytes`) and streamed to the call. A client-streaming
method answers its one reply as JSON; a bidirectional one answers like server streaming.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import status_pb2

from core.forwarding import FORWARDED_FOR, GATEWAY_PROOF, ClientForwarding
from core.request_context import new_request_id
from gateway.errors import (
    GatewayError,
    caller_http_status,
    cut,
    echo,
    error_headers,
    error_response,
    failed_in_transport,
    status_from_rpc_error,
    status_json,
)
from gateway.routes import Route, RouteTable
from gateway.transcoder import build_request, build_stream_requests, is_http_body, parse_query, response_json

log = logging.getLogger("tally.gateway")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Longer than aiohttp's 8190: the longest URL the OpenAPI document allows (a 1,000-character filter of
# 4-byte characters is 12,000 bytes percent-encoded) must reach the gateway.
MAX_REQUEST_LINE_BYTES = 32 * 1024
# Stripe-Signature: the signature over a Stripe webhook's raw body (GatewayEventService), which the
# method checks itself; it is the only header named here for one method.
_PASSED_HEADERS = ("Authorization", "traceparent", "tracestate", "Stripe-Signature")
_METADATA_PREFIX = "grpc-metadata-"
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_REQUEST_TIMEOUT = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?")
# gRPC's ASCII-Value; aiohttp hands over a non-ASCII byte as a surrogate escape, caught here too.
_ASCII_VALUE = re.compile(r"[\x20-\x7e]*")
# Within the server's 16 KiB metadata limit (app.server), with room for the gateway's own entries
# and gRPC's headers: past the limit gRPC refuses the call as RESOURCE_EXHAUSTED.
MAX_FORWARDED_HEADER_BYTES = 12 * 1024
DEFAULT_MAX_TIMEOUT_SECONDS = 300.0
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_FORWARDING_KEYS = frozenset({FORWARDED_FOR, GATEWAY_PROOF})
NO_FORWARDING = ClientForwarding()
_HIDDEN_METADATA = frozenset({"content-type", "user-agent", "te", "date", "x-request-id"})
CORS_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "X-Request-Id",
    "traceparent",
    "tracestate",
    "Request-Timeout",
    "Grpc-Timeout",
)
CORS_EXPOSE_HEADERS = ("X-Request-Id", "Retry-After", "WWW-Authenticate", "Allow")
# Set by the HTTP server's middleware (app.http), when there is one: the request id it answers
# with, so the gRPC call carries the same one.
REQUEST_ID_KEY = web.RequestKey("tally_request_id", str)
# Set by the gateway for the server's metrics: the matched route's template, else UNMATCHED.
ROUTE_KEY = web.RequestKey("tally_route", str)
UNMATCHED = "(unmatched)"


def parse_timeout(headers: Any, max_seconds: float = DEFAULT_MAX_TIMEOUT_SECONDS) -> float | None:
    """The call deadline in seconds from `Grpc-Timeout` or `Request-Timeout`, at most `max_seconds`;
    400 naming the header when malformed.

    `Grpc-Timeout` is the gRPC spec's form, 1 to 8 ASCII digits and a unit; its largest values
    (`99999999H`, 11,000 years) would overflow the call's deadline into one already past, so a
    deadline is cut to `max_seconds` rather than passed on."""
    grpc_timeout = headers.get("Grpc-Timeout")
    if grpc_timeout is not None:
        found = _GRPC_TIMEOUT.fullmatch(grpc_timeout)
        if found is None:
            raise GatewayError.invalid(
                "Grpc-Timeout", "expected 1 to 8 digits and a unit (H, M, S, m, u, n), such as 5S or 200m"
            )
        return min(int(found.group(1)) * _TIMEOUT_UNITS[found.group(2)], max_seconds)
    seconds = headers.get("Request-Timeout")
    if seconds is None:
        return None
    if _REQUEST_TIMEOUT.fullmatch(seconds) is None or float(seconds) == 0:
        raise GatewayError.invalid("Request-Timeout", "expected seconds, a number above 0 such as 2.5")
    return min(float(seconds), max_seconds)


def _forwarded(name: str, value: str) -> str:
    """`value` if gRPC metadata can carry it; else 400 naming the header, never echoing the value
    (it may be a credential). gRPC's C core would refuse it only once the call is made, as a
    failure of the call itself."""
    if _ASCII_VALUE.fullmatch(value) is None:
        raise GatewayError.invalid(
            name,
            "a header passed on to the service must be printable ASCII (space to ~): "
            "no TAB, control or non-ASCII characters",
            reason="INVALID_HEADER",
        )
    return value


def idempotency_key(headers: Any, request_id: str) -> str | None:
    """`Idempotency-Key`, else `X-Request-Id` when the server kept it as the call's request id,
    for an empty `request_id`; 400 when not printable ASCII."""
    key = headers.get("Idempotency-Key")
    if key:
        return _forwarded("Idempotency-Key", key)
    offered = headers.get("X-Request-Id")
    if offered and offered == request_id:
        return _forwarded("X-Request-Id", offered)
    return None


def request_metadata(
    headers: Any, request_id: str, client: str | None = None, forwarding: ClientForwarding = NO_FORWARDING
) -> list[tuple[str, str | bytes]]:
    """The gRPC metadata for one HTTP request's headers. `client` is the HTTP peer's address; the
    client it names (core.forwarding: itself, or from X-Forwarded-For behind a trusted proxy) is
    forwarded with the gateway's proof, so the server's rate limiter keys anonymous callers by
    client, not by gateway. A caller can set neither name itself. 400 for a value metadata
    cannot carry, 431 when the forwarded headers are too large."""
    metadata: list[tuple[str, str | bytes]] = [("x-request-id", request_id)]
    metadata.extend(forwarding.metadata(client, headers.getall("X-Forwarded-For", ())))
    size = 0
    for name in _PASSED_HEADERS:
        for value in headers.getall(name, ()):
            metadata.append((name.lower(), _forwarded(name, value)))
            size += len(name) + len(value)
    for name, value in headers.items():
        lowered = name.lower()
        if not lowered.startswith(_METADATA_PREFIX):
            continue
        key = lowered.removeprefix(_METADATA_PREFIX)
        if not _METADATA_KEY.fullmatch(key) or key.startswith("grpc-") or key in _FORWARDING_KEYS:
            raise GatewayError.invalid(cut(name), "not a usable gRPC metadata name")
        size += len(key) + len(value)
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value, validate=True)))
            except ValueError:
                raise GatewayError.invalid(name, "a -bin value must be base64") from None
        else:
            metadata.append((key, _forwarded(name, value)))
    if size > MAX_FORWARDED_HEADER_BYTES:
        raise GatewayError.forwarded_headers_too_large(MAX_FORWARDED_HEADER_BYTES)
    return metadata


def metadata_headers(*metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """gRPC response metadata as `Grpc-Metadata-<name>` headers (binary values in base64)."""
    headers: dict[str, str] = {}
    for part in metadata:
        for key, value in part or ():
            if key.startswith(("grpc-", ":")) or key in _HIDDEN_METADATA:
                continue
            text = base64.b64encode(value).decode() if isinstance(value, bytes) else value
            headers[f"Grpc-Metadata-{key}"] = text
    return headers


class Cors:
    """An allow-list of origins (`*` for any); no cookies are used, so `*` is safe to send."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)

    def headers(self, origin: str | None) -> dict[str, str]:
        if not origin or not self.origins:
            return {}
        if origin in self.origins:
            allowed = origin
        elif "*" in self.origins:
            allowed = "*"
        else:
            return {}
        return {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Expose-Headers": ", ".join(CORS_EXPOSE_HEADERS),
            "Vary": "Origin",
        }


class Gateway:
    """One HTTP handler for every route; the gRPC callables are made once per route."""

    def __init__(
        self,
        services: Sequence[ServiceDescriptor],
        channel: grpc.aio.Channel,
        *,
        strict: bool = True,
        cors_origins: Iterable[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        use_proto_names: bool = False,
        forwarding: ClientForwarding = NO_FORWARDING,
        max_timeout_seconds: float = DEFAULT_MAX_TIMEOUT_SECONDS,
    ) -> None:
        self.table = RouteTable.from_services(services)
        self.forwarding = forwarding
        self.strict = strict
        self.cors = Cors(cors_origins)
        self.max_body_bytes = max_body_bytes
        self.use_proto_names = use_proto_names
        self.max_timeout_seconds = max_timeout_seconds
        self._calls: dict[Route, Any] = {}
        for route in self.table.routes:
            make: Any
            if route.client_streaming:
                make = channel.stream_stream if route.server_streaming else channel.stream_unary
            else:
                make = channel.unary_stream if route.server_streaming else channel.unary_unary
            self._calls[route] = make(
                route.grpc_method,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )

    def route_defs(self) -> list[web.RouteDef]:
        defs: list[web.RouteDef] = []
        for prefix in self.table.prefixes():
            defs.append(web.route("*", f"/{prefix}", self.handle))
            # [\s\S], not `.`: a path with an encoded newline (%0A) must still reach the gateway
            # and get its JSON error, not aiohttp's text/plain 404 (found by schemathesis).
            defs.append(web.route("*", f"/{prefix}/{{tail:[\\s\\S]*}}", self.handle))
            # A verb on the first segment (`post: "/v1:batchGet"`) has no `/` after the prefix.
            defs.append(web.route("*", f"/{prefix}:{{verb:[\\s\\S]*}}", self.handle))
        return defs

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = request.get(REQUEST_ID_KEY) or new_request_id(request.headers.get("X-Request-Id"))
        common = {"X-Request-Id": request_id, **self.cors.headers(request.headers.get("Origin"))}
        raw_path = request.rel_url.raw_path
        request[ROUTE_KEY] = UNMATCHED
        try:
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return self._preflight(request, raw_path, common)
            route, variables = self.table.lookup(request.method, raw_path)
            request[ROUTE_KEY] = route.path
            body = await self._read_body(request)
            query = parse_query(request.rel_url.raw_query_string)
            # The caller's X-Request-Id only when it is kept as the correlation id: one the
            # server replaced is no key of the caller's.
            key = idempotency_key(request.headers, request_id)
            # One message, or for client streaming the list of them (one per NDJSON line).
            message: Any
            if route.client_streaming:
                message = build_stream_requests(
                    route, variables, query, body, strict=self.strict, idempotency_key=key
                )
            else:
                content_type = request.headers.get("Content-Type", "")
                message = build_request(
                    route,
                    variables,
                    query,
                    body,
                    strict=self.strict,
                    idempotency_key=key,
                    content_type=content_type,
                )
            metadata = request_metadata(request.headers, request_id, request.remote, self.forwarding)
            timeout = parse_timeout(request.headers, self.max_timeout_seconds)
        except GatewayError as error:
            return self._error(error.status(), error.http, {**common, **error.headers}, request)
        call = self._calls[route](message, metadata=metadata, timeout=timeout)
        if route.server_streaming:
            return await self._stream(request, route, call, common)
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            extra = metadata_headers(error.initial_metadata(), error.trailing_metadata())
            return self._rpc_error(route, error, {**common, **extra}, request)
        extra = metadata_headers(await call.initial_metadata(), await call.trailing_metadata())
        if is_http_body(response.DESCRIPTOR):
            kind = response.content_type or "application/octet-stream"
            body = response.data
            return web.Response(body=body, status=200, headers={**common, **extra, "Content-Type": kind})
        return self._json(
            response_json(route, response, use_proto_names=self.use_proto_names),
            200,
            {
                **common,
                **extra,
            },
        )

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_body(request, self.max_body_bytes)

    def _preflight(self, request: web.Request, raw_path: str, common: dict[str, str]) -> web.Response:
        if "Access-Control-Allow-Origin" not in common:
            raise GatewayError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"origin {echo(request.headers.get('Origin', ''))} is not allowed",
                reason="CORS_ORIGIN_NOT_ALLOWED",
            )
        methods = self.table.methods_for(raw_path)
        if not methods:
            raise GatewayError.route_not_found("OPTIONS", raw_path)
        headers = {
            **common,
            "Access-Control-Allow-Methods": ", ".join([*methods, "OPTIONS"]),
            "Access-Control-Allow-Headers": ", ".join(CORS_ALLOW_HEADERS),
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers=headers)

    def _json(self, data: Any, status: int, headers: dict[str, str]) -> web.Response:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return web.Response(text=text, status=status, content_type="application/json", headers=headers)

    def _error(
        self, status: status_pb2.Status, http: int, headers: dict[str, str], request: web.Request
    ) -> web.Response:
        had_credentials = "Authorization" in request.headers
        headers = {**headers, **error_headers(status, had_credentials=had_credentials)}
        return error_response(status, http, headers, use_proto_names=self.use_proto_names)

    def _rpc_error(
        self, route: Route, error: grpc.aio.AioRpcError, headers: dict[str, str], request: web.Request
    ) -> web.Response:
        status = self._caller_status(route, error, headers["X-Request-Id"])
        return self._error(status, caller_http_status(error, status), headers, request)

    @staticmethod
    def _caller_status(route: Route, error: grpc.aio.AioRpcError, request_id: str) -> status_pb2.Status:
        """The Status for the caller; a transport failure's own text (addresses) goes to the log only."""
        if failed_in_transport(error):
            log.warning(
                "%s failed: %s: %s",
                route.grpc_method,
                error.code().name,
                error.details(),
                extra={"request_id": request_id, "grpc_method": route.grpc_method},
            )
        return status_from_rpc_error(error)

    async def _stream(
        self,
        request: web.Request,
        route: Route,
        call: Any,
        common: dict[str, str],
    ) -> web.StreamResponse:
        """NDJSON, or SSE with `Accept: text/event-stream`; errors before the first message are plain."""
        sse = "text/event-stream" in request.headers.get("Accept", "")
        try:
            first_metadata = await call.initial_metadata()
        except grpc.aio.AioRpcError as error:
            return self._rpc_error(route, error, common, request)
        response = web.StreamResponse(headers={**common, **metadata_headers(first_metadata)})
        response.content_type = "text/event-stream" if sse else "application/x-ndjson"
        started = False
        try:
            try:
                async for item in call:
                    if not started:
                        await response.prepare(request)
                        started = True
                    data = response_json(route, item, use_proto_names=self.use_proto_names)
                    await response.write(self._frame({"result": data}, sse, None))
            except grpc.aio.AioRpcError as error:
                if not started:
                    return self._rpc_error(route, error, common, request)
                status = self._caller_status(route, error, common["X-Request-Id"])
                data = status_json(status, use_proto_names=self.use_proto_names)
                await response.write(self._frame({"error": data}, sse, "error"))
            if not started:
                await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-stream (aiohttp's ClientConnectionResetError)
            log.debug("%s: the client closed the stream", route.grpc_method)
        finally:
            call.cancel()  # a no-op once the call has ended; else the server stops producing
        return response

    @staticmethod
    def _frame(data: Any, sse: bool, event: str | None) -> bytes:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        if not sse:
            return (text + "\n").encode()
        return ((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode()


def _openapi_route(
    services: Sequence[ServiceDescriptor], use_proto_names: bool, strict: bool
) -> web.RouteDef | None:
    """GET /openapi.json from gateway.openapi.build_openapi, built once, when that module exists."""
    if importlib.util.find_spec("gateway.openapi") is None:
        return None
    build = getattr(importlib.import_module("gateway.openapi"), "build_openapi", None)
    if build is None:
        return None
    body = json.dumps(build(services, use_proto_names=use_proto_names, strict=strict), ensure_ascii=False)

    async def get_openapi(_request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-cache"})

    return web.get("/openapi.json", get_openapi)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or GatewayError.body_too_large (413) once it is past `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError.body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise GatewayError.body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def gateway_routes(
    services: Sequence[ServiceDescriptor],
    channel: grpc.aio.Channel,
    *,
    strict: bool = True,
    cors_origins: Iterable[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    use_proto_names: bool = False,
    forwarding: ClientForwarding = NO_FORWARDING,
    max_timeout_seconds: float = DEFAULT_MAX_TIMEOUT_SECONDS,
) -> list[web.RouteDef]:
    """aiohttp route definitions, for app.http.HttpServer(routes=...) or an aiohttp application.

    The caller owns `channel` (open it before serving; close it after HttpServer.stop()).
    """
    gateway = Gateway(
        services,
        channel,
        strict=strict,
        cors_origins=cors_origins,
        max_body_bytes=max_body_bytes,
        use_proto_names=use_proto_names,
        forwarding=forwarding,
        max_timeout_seconds=max_timeout_seconds,
    )
    defs = gateway.route_defs()
    openapi = _openapi_route(services, use_proto_names, strict)
    if openapi is not None:
        defs.append(openapi)
    return defs

"""Metrics and one access-log record per RPC.

Per call: tally_rpc_in_flight goes up while the handler runs, then
tally_rpc_requests_total{method,code} and tally_rpc_duration_seconds{method}
are recorded, and one record with message "rpc" is logged with the fields

    method       'tally.account.v1.AccountService/GetAccount'
    code         gRPC status name, 'OK', 'NOT_FOUND', ...
    duration_ms  float, handler start to last response
    peer         the client's address, '10.0.0.7:5000' or '[::1]:5000' (interceptors.peer)
    request_id   the client's x-request-id if sane, else a new one
    trace_id     32 hex digits, when a valid span is current (TracingInterceptor outside)
    span_id      16 hex digits, likewise
    principal    subject of the authenticated caller, when known
    error        exception class name, only for exceptions that escaped as UNKNOWN

at INFO, or WARNING for server faults (interceptors._rpc.SERVER_FAULTS);
successful health checks (`quiet_methods`) at DEBUG, so probes do not flood
the log. No metadata values other than x-request-id, no request or response
bodies.

A call to a method no service implements never reaches a handler: it is
logged (method name truncated, no peer or duration) and counted as
method="unknown", code="UNIMPLEMENTED", keeping client-chosen names out of the
metric labels.

It binds a `core.request_context.RequestInfo` for the call; the auth
interceptor (inside this one) sets `request_info().principal`. Order:
TracingInterceptor, ObservabilityInterceptor, then the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import trace

from core.metrics import Metrics
from core.principal import current_principal
from core.request_context import REQUEST_ID_HEADER, RequestInfo, new_request_id, request_scope
from interceptors._rpc import SERVER_FAULTS, RpcCall, observe, text_metadata, wrap_handler
from interceptors.peer import parse_peer

ACCESS_LOGGER = "tally.access"
QUIET_METHODS = frozenset({"grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"})
UNKNOWN_METHOD = "unknown"
_METHOD_LOG_LIMIT = 200


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        metrics: Metrics,
        logger: logging.Logger | None = None,
        *,
        quiet_methods: Iterable[str] = QUIET_METHODS,
    ) -> None:
        self._metrics = metrics
        self._log = logger or logging.getLogger(ACCESS_LOGGER)
        self._quiet = frozenset(quiet_methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            self._unknown_method(handler_call_details)
            return None
        return wrap_handler(handler, observe(handler_call_details, self._observe))

    def _unknown_method(self, details: grpc.HandlerCallDetails) -> None:
        code = grpc.StatusCode.UNIMPLEMENTED.name
        self._metrics.rpc_requests.labels(UNKNOWN_METHOD, code).inc()
        metadata = text_metadata(details.invocation_metadata)
        self._log.info(
            "rpc",
            extra={
                "method": str(details.method).lstrip("/")[:_METHOD_LOG_LIMIT],
                "code": code,
                "request_id": new_request_id(metadata.get(REQUEST_ID_HEADER)),
            },
        )

    @contextmanager
    def _observe(self, call: RpcCall) -> Iterator[None]:
        info = RequestInfo(request_id=new_request_id(call.metadata.get(REQUEST_ID_HEADER)))
        self._metrics.rpc_started(call.name)
        started = time.perf_counter()
        try:
            with request_scope(info):
                yield
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.rpc_finished(call.name, call.code.name, elapsed)
            self._access_log(call, info, elapsed)

    def _access_log(self, call: RpcCall, info: RequestInfo, elapsed: float) -> None:
        if call.code in SERVER_FAULTS:
            level = logging.WARNING
        elif call.code is grpc.StatusCode.OK and call.name in self._quiet:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not self._log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "method": call.name,
            "code": call.code.name,
            "duration_ms": round(elapsed * 1000, 3),
            "peer": str(parse_peer(call.peer())),
            "request_id": info.request_id,
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields["trace_id"] = trace.format_trace_id(span_context.trace_id)
            fields["span_id"] = trace.format_span_id(span_context.span_id)
        principal = info.principal or current_principal()
        if principal is not None:
            fields["principal"] = principal.subject
        if call.error is not None:
            fields["error"] = type(call.error).__name__
        self._log.log(level, "rpc", extra=fields)

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

It binds a `core.request_context.RequestInfo` for the call; the auth stage
(inside this one) sets `request_info().principal`. Order: tracing, observability,
then the rest (interceptors.pipeline).

Per call it costs little: the metric children of a method are looked up once
(`core.metrics.RpcMethodMetrics`), the peer is asked for once, and the record is
made without `findCaller` (`core.logs.log_fields`). `ObservabilityStage` is what
the pipeline calls; `ObservabilityInterceptor` is the stage alone, as an interceptor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import grpc
from opentelemetry import trace

from core.logs import log_fields
from core.metrics import Metrics, RpcMethodMetrics
from core.principal import current_principal
from core.request_context import (
    REQUEST_ID_HEADER,
    RequestInfo,
    bind_request_info,
    new_request_id,
    reset_request_info,
)
from interceptors._rpc import SERVER_FAULTS, CallState, MethodNames, text_metadata
from interceptors.peer import parse_peer
from interceptors.pipeline import Pipeline

ACCESS_LOGGER = "tally.access"
QUIET_METHODS = frozenset({"grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"})
UNKNOWN_METHOD = "unknown"
_METHOD_LOG_LIMIT = 200
_WHERE = (__file__, 0, "access_log")
_OK = grpc.StatusCode.OK


class MethodObserving:
    """The metrics and access log of one method."""

    __slots__ = ("_log", "_metrics", "_name", "_quiet")

    def __init__(self, stage: ObservabilityStage, names: MethodNames) -> None:
        self._name = names.name
        self._metrics: RpcMethodMetrics = stage.metrics.for_method(names.name)
        self._log = stage.log
        self._quiet = names.name in stage.quiet

    def start(self, call: CallState) -> tuple[RequestInfo, object, float]:
        info = RequestInfo(request_id=new_request_id(call.metadata.get(REQUEST_ID_HEADER)))
        self._metrics.started()
        token = bind_request_info(info)
        return info, token, time.perf_counter()

    def finish(self, call: CallState, started: tuple[RequestInfo, object, float] | None) -> None:
        if started is None:
            return
        info, token, began = started
        elapsed = time.perf_counter() - began
        reset_request_info(token)  # type: ignore[arg-type]
        code = call.code
        self._metrics.finished(code.name, elapsed)
        if code in SERVER_FAULTS:
            level = logging.WARNING
        elif code is _OK and self._quiet:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not self._log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "method": self._name,
            "code": code.name,
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
        log_fields(self._log, level, "rpc", fields, where=_WHERE)


class ObservabilityStage:
    def __init__(
        self,
        metrics: Metrics,
        logger: logging.Logger | None = None,
        *,
        quiet_methods: Iterable[str] = QUIET_METHODS,
    ) -> None:
        self.metrics = metrics
        self.log = logger or logging.getLogger(ACCESS_LOGGER)
        self.quiet = frozenset(quiet_methods)

    def for_method(self, names: MethodNames) -> MethodObserving:
        return MethodObserving(self, names)

    def unknown_method(self, details: grpc.HandlerCallDetails) -> None:
        code = grpc.StatusCode.UNIMPLEMENTED.name
        self.metrics.rpc_requests.labels(UNKNOWN_METHOD, code).inc()
        metadata = text_metadata(details.invocation_metadata)
        self.log.info(
            "rpc",
            extra={
                "method": str(details.method).lstrip("/")[:_METHOD_LOG_LIMIT],
                "code": code,
                "request_id": new_request_id(metadata.get(REQUEST_ID_HEADER)),
            },
        )


class ObservabilityInterceptor(Pipeline):
    """The observability stage alone, as an interceptor (inside tracing, outside the rest)."""

    def __init__(
        self,
        metrics: Metrics,
        logger: logging.Logger | None = None,
        *,
        quiet_methods: Iterable[str] = QUIET_METHODS,
    ) -> None:
        super().__init__(observability=ObservabilityStage(metrics, logger, quiet_methods=quiet_methods))

"""Prometheus metrics, in a registry owned by one `Metrics` object (built by the composition root).

Metric names (the text exposition adds _total, _bucket, _sum and _count):

    tally_rpc_requests_total{method,code}      calls finished, by gRPC status name
    tally_rpc_duration_seconds{method}         histogram, 1 ms to 10 s
    tally_rpc_in_flight{method}                calls running now
    tally_http_requests_total{method,route,status}   HTTP answers, by route template and status
    tally_http_request_duration_seconds{method,route}  histogram, 1 ms to 10 s
    tally_rate_limited_total{group}            calls refused by the rate limiter
    tally_rate_limiter_redis_up                1 while Redis answers, 0 when down or not configured
    tally_rate_limiter_fallbacks_total         switches from Redis to in-process buckets
    tally_rate_limiter_redis_calls_total       rate limit script calls to Redis (round trips)
    tally_auth_failures_total{reason}          rejected credentials, by a fixed reason constant
    tally_db_pool_size{pool}                   configured pool size
    tally_db_pool_checked_out{pool}            connections in use
    tally_db_pool_checked_in{pool}             idle connections in the pool
    tally_db_pool_overflow{pool}               connections open beyond the pool size
    tally_usage_events_total{outcome}          usage events answered: stored, replay, failed
    tally_webhook_deliveries_total{outcome}    webhook attempts recorded: succeeded, retried (due
                                               again), failed (the retry schedule spent)
    tally_webhook_deliveries_due               webhook deliveries due (in flight included) at the
                                               start of the last delivery pass
    tally_ready                                1 while this process takes traffic (started, not
                                               draining, database answering), else 0

`method` is 'pkg.Service/Method'; label values must come from fixed sets
(never user input) to keep the series count bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_requests = Counter(
            "tally_rpc_requests",
            "RPCs finished, by method and gRPC status code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "tally_rpc_duration_seconds",
            "Time from the handler's start to its last response, in seconds.",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.rpc_in_flight = Gauge("tally_rpc_in_flight", "RPCs being handled now.", ["method"], registry=r)
        self.http_requests = Counter(
            "tally_http_requests",
            "HTTP requests answered, by method, route template and HTTP status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "tally_http_request_duration_seconds",
            "Time from an HTTP request's routing to the end of its answer, in seconds.",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.rate_limited_total = Counter(
            "tally_rate_limited", "Calls refused by the rate limiter, by method group.", ["group"], registry=r
        )
        self.redis_up_gauge = Gauge(
            "tally_rate_limiter_redis_up",
            "1 while the rate limiter reaches Redis; 0 when it is down or not configured.",
            registry=r,
        )
        self.rate_limiter_fallbacks = Counter(
            "tally_rate_limiter_fallbacks",
            "Times the rate limiter lost Redis and fell back to in-process buckets.",
            registry=r,
        )
        self.rate_limiter_redis_calls = Counter(
            "tally_rate_limiter_redis_calls",
            "Rate limit script calls to Redis (round trips); checks served from a reservation make none.",
            registry=r,
        )
        self.auth_failures = Counter(
            "tally_auth_failures", "Rejected credentials, by reason.", ["reason"], registry=r
        )
        self.ready_gauge = Gauge(
            "tally_ready",
            "1 while this process takes traffic (started, not draining, database answering), else 0.",
            registry=r,
        )
        self.cache_reads = Counter(
            "tally_cache_reads",
            "Read-through cache reads, by resource kind and result (hit, miss, stale_fill, bypass: "
            "Redis unusable, served from the database).",
            ["kind", "result"],
            registry=r,
        )
        self.cache_errors = Counter(
            "tally_cache_errors",
            "Failed or timed-out cache calls to Redis, by operation.",
            ["operation"],
            registry=r,
        )
        self.cache_up_gauge = Gauge(
            "tally_cache_up", "1 while the read cache reaches Redis; 0 when it is down or off.", registry=r
        )
        self.usage_events = Counter(
            "tally_usage_events",
            "Usage events answered, by outcome: stored, replay (stored before), failed (refused).",
            ["outcome"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "tally_webhook_deliveries",
            "Webhook delivery attempts recorded, by outcome: succeeded (2xx), retried (due again), "
            "failed (the retry schedule spent).",
            ["outcome"],
            registry=r,
        )
        self.gateway_events = Counter(
            "tally_gateway_events",
            "Events received from payment gateways by webhook, by gateway and outcome: processed (acted "
            "on), duplicate (received before), ignored (not about a payment Tally made), rejected (bad "
            "signature or body).",
            ["gateway", "outcome"],
            registry=r,
        )
        self.webhook_due_gauge = Gauge(
            "tally_webhook_deliveries_due",
            "Webhook deliveries due (in flight included) at the start of the last delivery pass.",
            registry=r,
        )
        self.billing_work = Counter(
            "tally_billing_work",
            "Billing worker results: boundaries run by kind (renewal, trial_end, scheduled_change, "
            "cancellation) and subscriptions whose work failed (failed).",
            ["kind"],
            registry=r,
        )
        self.collections = Counter(
            "tally_collections",
            "Automatic collection attempts of invoices by outcome (paid, declined, pending, "
            "nothing_due, gateway_unavailable, no_payment_method).",
            ["outcome"],
            registry=r,
        )
        self._pools = _PoolCollector()
        r.register(self._pools)
        self._redis_lock = threading.Lock()
        self._redis_is_up: bool | None = None

    # --- RPCs (the observability interceptor; the REST gateway may use them too) --------------------

    def billing_work_done(self, kind: str, count: int) -> None:
        self.billing_work.labels(kind).inc(count)

    def collection_done(self, outcome: str) -> None:
        self.collections.labels(outcome).inc()

    def usage_recorded(self, outcome: str, count: int) -> None:
        self.usage_events.labels(outcome).inc(count)

    def rpc_started(self, method: str) -> None:
        self.rpc_in_flight.labels(method).inc()

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        self.rpc_in_flight.labels(method).dec()
        self.rpc_requests.labels(method, code).inc()
        self.rpc_duration.labels(method).observe(seconds)

    def for_method(self, method: str) -> RpcMethodMetrics:
        """The RPC series of one method, with their label children looked up once (the pipeline
        keeps one per method): the same series rpc_started/rpc_finished update."""
        return RpcMethodMetrics(self, method)

    def http_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        """`method` and `route` from fixed sets (a route template, never the path itself)."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    # --- events other parts report ------------------------------------------------------------------

    def webhook_delivered(self, outcome: str) -> None:
        """`outcome`: "succeeded", "retried" or "failed" (billing_svc.webhooks.delivery)."""
        self.webhook_deliveries.labels(outcome).inc()

    def gateway_event(self, gateway: str, outcome: str) -> None:
        """`outcome`: processed, duplicate, ignored or rejected (GatewayEventService's servicer)."""
        self.gateway_events.labels(gateway, outcome).inc()

    def webhook_backlog(self, due: int) -> None:
        self.webhook_due_gauge.set(due)

    def rate_limited(self, group: str) -> None:
        self.rate_limited_total.labels(group).inc()

    def rate_limiter_redis_call(self) -> None:
        self.rate_limiter_redis_calls.inc()

    def auth_failed(self, reason: str) -> None:
        """`reason`: a fixed constant such as 'expired', 'bad_signature', 'missing'; never token text."""
        self.auth_failures.labels(reason).inc()

    def redis_up(self) -> None:
        with self._redis_lock:
            self._redis_is_up = True
            self.redis_up_gauge.set(1)

    def redis_down(self) -> None:
        """Redis is unreachable; counts a fallback only on the transition, so calling it per call is fine."""
        with self._redis_lock:
            if self._redis_is_up is not False:
                self.rate_limiter_fallbacks.inc()
            self._redis_is_up = False
            self.redis_up_gauge.set(0)

    # The read cache (core.cache.CacheEvents).
    def cache_result(self, kind: str, result: str) -> None:
        self.cache_reads.labels(kind, result).inc()

    def cache_error(self, operation: str) -> None:
        self.cache_errors.labels(operation).inc()

    def cache_up(self, up: bool) -> None:
        self.cache_up_gauge.set(1 if up else 0)

    def set_ready(self, ready: bool) -> None:
        self.ready_gauge.set(1 if ready else 0)

    def watch_pool(self, engine: AsyncEngine, name: str = "main") -> None:
        """Export the engine's connection-pool gauges with label pool=`name` (replaces a previous one)."""
        self._pools.watch(name, engine)

    def render(self) -> bytes:
        """Everything in the Prometheus text format 0.0.4 (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class RpcMethodMetrics:
    """tally_rpc_in_flight, tally_rpc_duration_seconds and tally_rpc_requests_total of one method."""

    __slots__ = ("_by_code", "_duration", "_in_flight", "_method", "_requests")

    def __init__(self, metrics: Metrics, method: str) -> None:
        self._method = method
        self._in_flight = metrics.rpc_in_flight.labels(method)
        self._duration = metrics.rpc_duration.labels(method)
        self._requests = metrics.rpc_requests
        self._by_code: dict[str, Counter] = {}

    def started(self) -> None:
        self._in_flight.inc()

    def finished(self, code: str, seconds: float) -> None:
        self._in_flight.dec()
        counter = self._by_code.get(code)
        if counter is None:  # at most one per status code
            counter = self._by_code[code] = self._requests.labels(self._method, code)
        counter.inc()
        self._duration.observe(seconds)


class _PoolCollector(Collector):
    """Reads the pools at scrape time; a pool without a statistic (NullPool, StaticPool) just omits it."""

    _GAUGES: tuple[tuple[str, str, str], ...] = (
        ("tally_db_pool_size", "Configured size of the database connection pool.", "size"),
        ("tally_db_pool_checked_out", "Database connections in use.", "checkedout"),
        ("tally_db_pool_checked_in", "Idle database connections held by the pool.", "checkedin"),
        ("tally_db_pool_overflow", "Database connections open beyond the pool size.", "overflow"),
    )

    def __init__(self) -> None:
        self._engines: dict[str, AsyncEngine] = {}

    def watch(self, name: str, engine: AsyncEngine) -> None:
        self._engines = {**self._engines, name: engine}

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(name, doc, labels=["pool"]) for name, doc, _ in self._GAUGES]

    def collect(self) -> Iterable[Metric]:
        families = [GaugeMetricFamily(name, doc, labels=["pool"]) for name, doc, _ in self._GAUGES]
        for pool_name, engine in self._engines.items():
            pool = engine.sync_engine.pool
            for family, (_, _, attribute) in zip(families, self._GAUGES, strict=True):
                value = _read(getattr(pool, attribute, None))
                if value is not None:
                    if attribute == "overflow":
                        value = max(value, 0.0)  # QueuePool counts up from -size while it fills
                    family.add_metric([pool_name], value)
        return families


def _read(statistic: Callable[[], object] | None) -> float | None:
    if not callable(statistic):
        return None
    try:
        value = statistic()
    except Exception:
        return None
    return float(value) if isinstance(value, int | float) else None

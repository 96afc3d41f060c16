"""A circuit breaker around one payment gateway.

It opens after `failure_threshold` consecutive FAILED or UNKNOWN results (a decline is the
gateway working), lets one trial call through once `cool_down` has passed (half-open), and
closes on any definite answer. While open, calls return FAILED without reaching the gateway.

Written here rather than taken from purgatory or aiobreaker: both read the wall clock themselves
(the time module and datetime directly) so a FrozenClock cannot drive them, and both count raised
exceptions while our adapters return results.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from enum import IntEnum

from prometheus_client import CollectorRegistry, Gauge

from billing_svc.payments.gateways.port import (
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    PaymentGateway,
    RefundRequest,
    RefundResult,
    RefundStatus,
)
from core.clock import Clock

_TROUBLE = frozenset({ChargeStatus.FAILED, ChargeStatus.UNKNOWN, RefundStatus.FAILED, RefundStatus.UNKNOWN})


class CircuitState(IntEnum):
    """The values of tally_payment_gateway_circuit_state."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


def circuit_state_gauge(registry: CollectorRegistry) -> Gauge:
    """tally_payment_gateway_circuit_state{gateway}, in the registry of core.metrics.Metrics."""
    return Gauge(
        "tally_payment_gateway_circuit_state",
        "Circuit breaker of each payment gateway: 0 closed, 1 half-open, 2 open.",
        ["gateway"],
        registry=registry,
    )


class CircuitBreaker:
    def __init__(
        self,
        inner: PaymentGateway,
        clock: Clock,
        *,
        failure_threshold: int = 5,
        cool_down: timedelta = timedelta(seconds=30),
        gauge: Gauge | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = inner.name
        self._inner = inner
        self._clock = clock
        self._threshold = failure_threshold
        self._cool_down = cool_down
        self._gauge = gauge.labels(inner.name) if gauge is not None else None
        self._failures = 0
        self._opened_at = clock.now()
        self._trial_running = False
        self._state = CircuitState.CLOSED
        self._show()

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock.now() >= self._opened_at + self._cool_down:
            self._set(CircuitState.HALF_OPEN)
        return self._state

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        if not self._admit():
            return ChargeResult(ChargeStatus.FAILED, None, None, self._refusal())
        with self._trial_released():
            result = await self._inner.charge(request)
        self._record(result.status in _TROUBLE)
        return result

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        # UNKNOWN: an open circuit says nothing about the charge, only that we cannot ask now.
        if not self._admit():
            return ChargeResult(ChargeStatus.UNKNOWN, None, None, self._refusal())
        with self._trial_released():
            result = await self._inner.lookup(idempotency_key)
        self._record(result is not None and result.status in _TROUBLE)
        return result

    async def refund(self, request: RefundRequest) -> RefundResult:
        if not self._admit():
            return RefundResult(RefundStatus.FAILED, None, self._refusal())
        with self._trial_released():
            result = await self._inner.refund(request)
        self._record(result.status in _TROUBLE)
        return result

    async def lookup_refund(self, idempotency_key: str, *, charge_reference: str) -> RefundResult | None:
        if not self._admit():
            return RefundResult(RefundStatus.UNKNOWN, None, self._refusal())
        with self._trial_released():
            result = await self._inner.lookup_refund(idempotency_key, charge_reference=charge_reference)
        self._record(result is not None and result.status in _TROUBLE)
        return result

    def _admit(self) -> bool:
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        return False

    @contextmanager
    def _trial_released(self) -> Iterator[None]:
        """A call that raised (a bug, a cancellation) proves nothing: free the trial, count nothing."""
        try:
            yield
        except BaseException:
            self._trial_running = False
            raise

    def _refusal(self) -> str:
        return f"circuit open for gateway {self.name}: not called"

    def _record(self, trouble: bool) -> None:
        was_trial, self._trial_running = self._trial_running, False
        if not trouble:
            self._failures = 0
            self._set(CircuitState.CLOSED)
            return
        self._failures += 1
        if was_trial or self._failures >= self._threshold:
            self._opened_at = self._clock.now()
            self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        self._state = state
        self._show()

    def _show(self) -> None:
        if self._gauge is not None:
            self._gauge.set(int(self._state))

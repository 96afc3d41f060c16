"""The circuit breaker around a payment gateway, on a fake gateway and a FrozenClock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from billing_svc.payments.gateways.breaker import CircuitBreaker, CircuitState, circuit_state_gauge
from billing_svc.payments.gateways.port import (
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    RefundRequest,
    RefundResult,
    RefundStatus,
)
from core.clock import FrozenClock


class ScriptedGateway:
    """Answers each charge with the next status of its script; counts the calls it got."""

    name = "fake"

    def __init__(self, *statuses: ChargeStatus) -> None:
        self.script = list(statuses)
        self.calls = 0

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        self.calls += 1
        return ChargeResult(self.script.pop(0), None, None, "scripted")

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        self.calls += 1
        return None

    async def refund(self, request: RefundRequest) -> RefundResult:
        self.calls += 1
        return RefundResult(RefundStatus.SUCCEEDED, "re_1", "scripted")

    async def lookup_refund(self, idempotency_key: str, *, charge_reference: str) -> RefundResult | None:
        self.calls += 1
        return None


def request(key: str = "pay_1") -> ChargeRequest:
    return ChargeRequest(key, 1000, "USD", "tok_success", "invoice", {})


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))


def state_of(breaker: CircuitBreaker) -> CircuitState:
    """A call, so that mypy does not narrow the state across awaits and clock moves."""
    return breaker.state


F, U, S, D = ChargeStatus.FAILED, ChargeStatus.UNKNOWN, ChargeStatus.SUCCEEDED, ChargeStatus.DECLINED


async def test_opens_after_n_consecutive_failures_and_stops_calling(clock: FrozenClock) -> None:
    inner = ScriptedGateway(F, U, F)
    breaker = CircuitBreaker(inner, clock, failure_threshold=3)
    for _ in range(3):
        await breaker.charge(request())
    assert state_of(breaker) is CircuitState.OPEN
    refused = await breaker.charge(request())
    assert refused.status is ChargeStatus.FAILED and "circuit open" in refused.message
    assert (await breaker.refund(RefundRequest("re_k", "ch_1", 10, "USD"))).status is RefundStatus.FAILED
    looked_up = await breaker.lookup("pay_1")
    assert looked_up is not None and looked_up.status is ChargeStatus.UNKNOWN
    # An open circuit says nothing of a refund either: unknown, never "not found" (that would fail it).
    refund_found = await breaker.lookup_refund("re_k", charge_reference="ch_1")
    assert refund_found is not None and refund_found.status is RefundStatus.UNKNOWN
    assert inner.calls == 3


async def test_declines_do_not_count_and_a_success_resets_the_count(clock: FrozenClock) -> None:
    inner = ScriptedGateway(F, F, D, F, F, S, F, F)
    breaker = CircuitBreaker(inner, clock, failure_threshold=3)
    for _ in range(8):
        await breaker.charge(request())
    assert state_of(breaker) is CircuitState.CLOSED
    assert inner.calls == 8


async def test_half_opens_after_the_cool_down_and_closes_on_success(clock: FrozenClock) -> None:
    inner = ScriptedGateway(F, S, S)
    breaker = CircuitBreaker(inner, clock, failure_threshold=1, cool_down=timedelta(seconds=30))
    await breaker.charge(request())
    clock.advance(timedelta(seconds=29))
    assert state_of(breaker) is CircuitState.OPEN
    clock.advance(timedelta(seconds=1))
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert (await breaker.charge(request())).status is ChargeStatus.SUCCEEDED
    assert state_of(breaker) is CircuitState.CLOSED
    assert (await breaker.charge(request())).status is ChargeStatus.SUCCEEDED


async def test_a_failed_trial_opens_again_for_a_full_cool_down(clock: FrozenClock) -> None:
    inner = ScriptedGateway(F, F, F, F)
    breaker = CircuitBreaker(inner, clock, failure_threshold=2, cool_down=timedelta(seconds=10))
    await breaker.charge(request())
    await breaker.charge(request())
    clock.advance(timedelta(seconds=10))
    await breaker.charge(request())  # the trial, failing
    assert state_of(breaker) is CircuitState.OPEN
    clock.advance(timedelta(seconds=9))
    await breaker.charge(request())
    assert inner.calls == 3


async def test_the_gauge_follows_the_state(clock: FrozenClock) -> None:
    registry = CollectorRegistry()
    gauge = circuit_state_gauge(registry)
    breaker = CircuitBreaker(ScriptedGateway(F, S), clock, failure_threshold=1, gauge=gauge)

    def value() -> float | None:
        return registry.get_sample_value("tally_payment_gateway_circuit_state", {"gateway": "fake"})

    assert value() == 0
    await breaker.charge(request())
    assert value() == 2
    clock.advance(timedelta(seconds=30))
    assert state_of(breaker) is CircuitState.HALF_OPEN and value() == 1
    await breaker.charge(request())
    assert value() == 0

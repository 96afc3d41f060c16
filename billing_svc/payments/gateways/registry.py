"""The payment gateways a process can reach, built from settings, each behind its circuit breaker.

Which gateway a payment goes through: the account's payment settings, else the one of the payment's
currency (TALLY_PAYMENT_GATEWAY_BY_CURRENCY), else TALLY_PAYMENT_GATEWAY_DEFAULT. A gateway that is
named but not configured (stripe without TALLY_STRIPE_API_KEY) is FAILED_PRECONDITION, before any
payment is written. Adapters are made on first use (no connection is opened at build time) and
closed with the process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge

from billing_svc.payments.gateways.breaker import CircuitBreaker, circuit_state_gauge
from billing_svc.payments.gateways.port import PaymentGateway
from core.clock import Clock
from core.errors import FailedPrecondition

GatewayFactory = Callable[[], PaymentGateway]


def gateway_unavailable(name: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"payment gateway {name!r} is {why}",
        reason="PAYMENT_GATEWAY_NOT_CONFIGURED",
        metadata={"gateway": name},
    )


@dataclass
class GatewayRegistry:
    factories: Mapping[str, GatewayFactory]  # the configured gateways, by name
    clock: Clock
    default: str = "sandbox"
    by_currency: Mapping[str, str] = field(default_factory=dict)
    known: tuple[str, ...] = ("sandbox", "stripe")
    _made: dict[str, CircuitBreaker] = field(default_factory=dict, init=False)
    _inner: list[PaymentGateway] = field(default_factory=list, init=False)
    _gauge: Gauge | None = field(default=None, init=False)

    def report_to(self, registry: CollectorRegistry) -> None:
        """Publish each breaker's state (tally_payment_gateway_circuit_state) in `registry`."""
        self._gauge = circuit_state_gauge(registry)

    def choose(self, account_gateway: str, currency_code: str) -> str:
        """The name of the gateway for a payment, checked to be configured."""
        name = account_gateway or self.by_currency.get(currency_code, "") or self.default
        self._check(name)
        return name

    def _check(self, name: str) -> None:
        if name not in self.known:
            raise gateway_unavailable(name, f"unknown (known: {', '.join(self.known)})")
        if name not in self.factories:
            raise gateway_unavailable(name, "not configured in this deployment")

    def get(self, name: str) -> PaymentGateway:
        """The gateway, behind its circuit breaker."""
        self._check(name)
        breaker = self._made.get(name)
        if breaker is None:
            inner = self.factories[name]()
            self._inner.append(inner)
            breaker = CircuitBreaker(inner, self.clock, gauge=self._gauge)
            self._made[name] = breaker
        return breaker

    async def close(self) -> None:
        for inner in self._inner:
            close = getattr(inner, "close", None)
            if close is not None:
                await close()
        self._inner.clear()
        self._made.clear()

"""Which gateway a payment goes through (the account's, the currency's, the default), the setting
that maps currencies, and what a pending refund holds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from billing_svc.payments import domain
from billing_svc.payments.gateways.registry import GatewayRegistry
from billing_svc.payments.gateways.sandbox import SandboxGateway
from core.clock import FrozenClock
from core.errors import FailedPrecondition
from core.settings import parse_gateway_by_currency

NOW = datetime(2027, 1, 1, tzinfo=UTC)


def registry(**fields: object) -> GatewayRegistry:
    factories = {"sandbox": lambda: SandboxGateway("http://127.0.0.1:1")}
    return GatewayRegistry(factories, FrozenClock(NOW), **fields)  # type: ignore[arg-type]


def test_the_accounts_gateway_wins_then_the_currencys_then_the_default() -> None:
    chosen = registry(by_currency={"EUR": "stripe"}, default="sandbox")
    assert chosen.choose("", "USD") == "sandbox"
    with pytest.raises(FailedPrecondition) as refused:  # EUR goes to stripe, which has no key here
        chosen.choose("", "EUR")
    assert refused.value.reason == "PAYMENT_GATEWAY_NOT_CONFIGURED"
    assert chosen.choose("sandbox", "EUR") == "sandbox"
    with pytest.raises(FailedPrecondition, match="unknown"):
        chosen.choose("paypal", "USD")


def test_a_gateway_is_made_once_behind_its_breaker() -> None:
    made = registry()
    first = made.get("sandbox")
    assert made.get("sandbox") is first and first.name == "sandbox"


def test_gateway_by_currency_pairs() -> None:
    assert parse_gateway_by_currency("EUR=stripe, USD=sandbox") == {"EUR": "stripe", "USD": "sandbox"}
    assert parse_gateway_by_currency("") == {}
    for bad in ("EUR", "eur=stripe", "EUR=paypal", "EURO=stripe"):
        with pytest.raises(ValueError, match="gateway"):
            parse_gateway_by_currency(bad)


def test_pending_refunds_hold_their_amount() -> None:
    payment = domain.Payment(
        id="pay_1",
        account_id="acct_1",
        invoice_id="",
        currency_code="USD",
        amount_minor=1000,
        status=domain.PaymentStatus.SUCCEEDED,
        gateway="sandbox",
        payment_method="tok_success",
        description="",
        create_time=NOW,
        update_time=NOW,
    )
    pending = domain.Refund("prf_1", 600, domain.RefundStatus.PENDING, "", NOW)
    held = domain.with_refund(payment, pending, NOW)
    assert held.refundable_minor == 400 and held.amount_refunded_minor == 0
    with pytest.raises(FailedPrecondition):
        domain.require_refundable(held, 401)
    failed = domain.with_refund(held, replace(pending, status=domain.RefundStatus.FAILED), NOW)
    assert failed.refundable_minor == 1000 and len(failed.refunds) == 1
    done = domain.with_refund(held, replace(pending, status=domain.RefundStatus.SUCCEEDED), NOW)
    assert (done.refundable_minor, done.amount_refunded_minor) == (400, 600)
    assert domain.Payment.from_dict(done.to_dict()) == done
    assert replace(done, status=domain.PaymentStatus.FAILED).refundable_minor == 0

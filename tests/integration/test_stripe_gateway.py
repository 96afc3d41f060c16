"""The Stripe adapter: the real SDK against a local stand-in of Stripe's API (tests/stripe_standin.py)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from billing_svc.payments.gateways.port import (
    ChargeRequest,
    ChargeStatus,
    GatewayMisuse,
    RefundRequest,
    RefundStatus,
)
from billing_svc.payments.gateways.stripe_gateway import StripeGateway
from tests.stripe_standin import API_KEY, SLOW_DELAY, StandinState, running_standin

CLIENT_TIMEOUT = SLOW_DELAY / 4


@pytest.fixture
async def standin() -> AsyncIterator[tuple[str, StandinState]]:
    async with running_standin() as running:
        yield running


@pytest.fixture
async def gateway(standin) -> AsyncIterator[StripeGateway]:
    adapter = StripeGateway(API_KEY, api_base=standin[0], timeout=CLIENT_TIMEOUT)
    yield adapter
    await adapter.close()


def charge_of(method: str, amount: int = 2000, key: str | None = None) -> ChargeRequest:
    return ChargeRequest(
        key or f"pay_{uuid.uuid4().hex}", amount, "EUR", method, "invoice inv_1", {"inv": "inv_1"}
    )


async def test_a_success_is_one_payment_intent_however_often_repeated(gateway, standin) -> None:
    request = charge_of("pm_card_visa")
    first = await gateway.charge(request)
    assert first.status is ChargeStatus.SUCCEEDED and (first.reference or "").startswith("pi_")
    assert await gateway.charge(request) == first
    assert standin[1].created[request.idempotency_key] == 1
    intent = standin[1].intents[first.reference or ""]
    assert intent["currency"] == "eur" and intent["metadata"] == {
        "inv": "inv_1",
        "tally_idempotency_key": request.idempotency_key,
    }
    assert await gateway.lookup(request.idempotency_key) == first


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_does_not_exist", "resource_missing"),
    ],
)
async def test_card_errors_and_a_bad_payment_method_are_declines(gateway, method, code) -> None:
    result = await gateway.charge(charge_of(method))
    assert (result.status, result.decline_code) == (ChargeStatus.DECLINED, code)


async def test_a_declined_intent_is_found_declined(gateway) -> None:
    request = charge_of("pm_card_chargeDeclined")
    declined = await gateway.charge(request)
    found = await gateway.lookup(request.idempotency_key)
    assert found is not None and (found.status, found.reference) == (
        ChargeStatus.DECLINED,
        declined.reference,
    )
    assert found.decline_code == "generic_decline"


@pytest.mark.parametrize("method", ["pm_processing", "pm_requires_action"])
async def test_processing_and_requires_action_are_pending(gateway, method) -> None:
    assert (await gateway.charge(charge_of(method))).status is ChargeStatus.PENDING


async def test_a_500_is_unknown_and_the_lookup_finds_what_stripe_did(gateway) -> None:
    request = charge_of("pm_server_error")
    assert (await gateway.charge(request)).status is ChargeStatus.UNKNOWN
    found = await gateway.lookup(request.idempotency_key)
    assert found is not None and found.status is ChargeStatus.SUCCEEDED


async def test_a_read_timeout_is_unknown_and_a_retry_with_the_key_charges_once(gateway, standin) -> None:
    request = charge_of("pm_slow")
    assert (await gateway.charge(request)).status is ChargeStatus.UNKNOWN
    assert (await gateway.charge(request)).status is ChargeStatus.SUCCEEDED
    assert standin[1].created[request.idempotency_key] == 1


async def test_rate_limits_and_a_bad_api_key_are_failures(gateway, standin) -> None:
    assert (await gateway.charge(charge_of("pm_rate_limited"))).status is ChargeStatus.FAILED
    wrong_key = StripeGateway("sk_test_wrong", api_base=standin[0], timeout=CLIENT_TIMEOUT)
    try:
        assert (await wrong_key.charge(charge_of("pm_card_visa"))).status is ChargeStatus.FAILED
    finally:
        await wrong_key.close()
    assert sum(standin[1].created.values()) == 0


async def test_a_refused_connection_is_a_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = StripeGateway(API_KEY, api_base=f"http://127.0.0.1:{port}", timeout=CLIENT_TIMEOUT)
    try:
        assert (await adapter.charge(charge_of("pm_card_visa"))).status is ChargeStatus.FAILED
        found = await adapter.lookup("pay_x")
        assert found is not None and found.status is ChargeStatus.UNKNOWN
    finally:
        await adapter.close()


async def test_a_key_reused_with_another_amount_raises(gateway) -> None:
    request = charge_of("pm_card_visa", amount=100)
    await gateway.charge(request)
    with pytest.raises(GatewayMisuse):
        await gateway.charge(charge_of("pm_card_visa", amount=101, key=request.idempotency_key))


async def test_never_seen_is_none(gateway) -> None:
    assert await gateway.lookup("pay_never") is None


async def test_partial_refunds_never_exceed_what_remains(gateway, standin) -> None:
    charged = await gateway.charge(charge_of("pm_card_visa", amount=1000))
    reference = charged.reference or ""
    first = await gateway.refund(RefundRequest("re_1", reference, 700, "EUR"))
    assert first.status is RefundStatus.SUCCEEDED and first.reference
    assert await gateway.refund(RefundRequest("re_1", reference, 700, "EUR")) == first
    assert (
        await gateway.refund(RefundRequest("re_2", reference, 301, "EUR"))
    ).status is RefundStatus.DECLINED
    assert (
        await gateway.refund(RefundRequest("re_3", reference, 300, "EUR"))
    ).status is RefundStatus.SUCCEEDED
    assert standin[1].refunded[reference] == 1000

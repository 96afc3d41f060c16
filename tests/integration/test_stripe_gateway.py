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
        refund = await adapter.lookup_refund("prf_x", charge_reference="pi_x")
        assert refund is not None and refund.status is RefundStatus.UNKNOWN
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


async def test_a_refund_is_looked_up_by_its_key_among_the_intents_refunds(gateway, standin) -> None:
    """Stripe has no lookup by idempotency key: the key rides in the refund's metadata and the lookup
    lists the PaymentIntent's refunds (https://docs.stripe.com/api/refunds/list, `payment_intent`,
    newest first, paged by `starting_after`), here one to a page so that it has to page."""
    charged = await gateway.charge(charge_of("pm_card_visa", amount=1000))
    other = await gateway.charge(charge_of("pm_card_visa", amount=1000))
    reference, elsewhere = charged.reference or "", other.reference or ""
    first = await gateway.refund(RefundRequest("prf_first", reference, 300, "EUR"))
    await gateway.refund(RefundRequest("prf_second", reference, 200, "EUR"))
    await gateway.refund(RefundRequest("prf_third", elsewhere, 100, "EUR"))
    assert standin[1].refunds[0]["metadata"] == {"tally_idempotency_key": "prf_first"}
    standin[1].page_limit = 1
    assert await gateway.lookup_refund("prf_first", charge_reference=reference) == first
    assert await gateway.lookup_refund("prf_never", charge_reference=reference) is None
    assert await gateway.lookup_refund("prf_third", charge_reference=reference) is None  # another intent's
    assert await gateway.lookup_refund("prf_first", charge_reference="") is None


async def test_a_slow_refund_is_unknown_and_the_lookup_finds_it_made_once(gateway, standin) -> None:
    charged = await gateway.charge(charge_of("pm_card_visa", amount=1000))
    standin[1].refund_delay = SLOW_DELAY
    request = RefundRequest("prf_slow", charged.reference or "", 1000, "EUR")
    assert (await gateway.refund(request)).status is RefundStatus.UNKNOWN
    found = await gateway.lookup_refund("prf_slow", charge_reference=request.charge_reference)
    assert found is not None and found.status is RefundStatus.SUCCEEDED
    assert standin[1].refunds_created["prf_slow"] == 1


async def test_refund_statuses_map_as_stripe_documents_them(gateway, standin) -> None:
    """Stripe's Refund status is pending, requires_action, succeeded, failed or canceled
    (https://docs.stripe.com/api/refunds/object): the first two are looked up again later, the last
    two gave nothing back."""
    charged = await gateway.charge(charge_of("pm_card_visa", amount=1000))
    reference = charged.reference or ""
    standin[1].refund_status = "pending"
    assert (
        await gateway.refund(RefundRequest("prf_p", reference, 400, "EUR"))
    ).status is RefundStatus.PENDING
    made = standin[1].refunds[-1]
    for status, expected in (
        ("requires_action", RefundStatus.PENDING),
        ("succeeded", RefundStatus.SUCCEEDED),
        ("failed", RefundStatus.DECLINED),
        ("canceled", RefundStatus.DECLINED),
    ):
        made["status"] = status
        found = await gateway.lookup_refund("prf_p", charge_reference=reference)
        assert found is not None and (found.status, found.reference) == (expected, made["id"]), status
    standin[1].refund_status = "failed"
    failed = await gateway.refund(RefundRequest("prf_f", reference, 100, "EUR"))
    assert (failed.status, failed.message) == (RefundStatus.DECLINED, "declined")

"""Stripe webhooks: payloads signed the way Stripe signs them (HMAC-SHA256 of "t.payload")."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_svc.payments.gateways.port import ChargeStatus
from billing_svc.payments.gateways.stripe_webhooks import StripeWebhooks
from core.clock import FrozenClock
from core.errors import InvalidArgument, Unauthenticated

SECRET = "whsec_test_secret"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def sign(payload: bytes, at: datetime = NOW, secret: str = SECRET) -> str:
    stamp = int(at.timestamp())
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def event(kind: str, status: str, *, error: dict[str, Any] | None = None, key: str | None = "pay_1") -> bytes:
    intent = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": status,
        "metadata": {"tally_idempotency_key": key} if key else {},
        "last_payment_error": error,
    }
    body = {"id": "evt_1", "object": "event", "type": kind, "data": {"object": intent}}
    return json.dumps(body).encode()


@pytest.fixture
def webhooks() -> StripeWebhooks:
    return StripeWebhooks(SECRET, FrozenClock(NOW), tolerance=timedelta(minutes=5))


def test_a_succeeded_intent_is_a_success_for_its_attempt(webhooks: StripeWebhooks) -> None:
    payload = event("payment_intent.succeeded", "succeeded")
    parsed = webhooks.parse(payload, sign(payload))
    assert parsed is not None
    assert (parsed.event_id, parsed.idempotency_key) == ("evt_1", "pay_1")
    assert (parsed.result.status, parsed.result.reference) == (ChargeStatus.SUCCEEDED, "pi_1")


@pytest.mark.parametrize(
    ("kind", "status", "expected", "code"),
    [
        (
            "payment_intent.payment_failed",
            "requires_payment_method",
            ChargeStatus.DECLINED,
            "insufficient_funds",
        ),
        ("payment_intent.processing", "processing", ChargeStatus.PENDING, None),
        ("payment_intent.canceled", "canceled", ChargeStatus.DECLINED, "canceled"),
    ],
)
def test_failed_processing_and_canceled(webhooks, kind, status, expected, code) -> None:
    error = {"code": "card_declined", "decline_code": "insufficient_funds"} if "failed" in kind else None
    payload = event(kind, status, error=error)
    parsed = webhooks.parse(payload, sign(payload))
    assert parsed is not None and (parsed.result.status, parsed.result.decline_code) == (expected, code)


def test_other_events_and_intents_not_ours_are_ignored(webhooks: StripeWebhooks) -> None:
    other = event("charge.refunded", "succeeded")
    assert webhooks.parse(other, sign(other)) is None
    foreign = event("payment_intent.succeeded", "succeeded", key=None)
    assert webhooks.parse(foreign, sign(foreign)) is None


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "t=1,v1=deadbeef",
        sign(event("payment_intent.succeeded", "canceled")),  # another payload's signature
        sign(event("payment_intent.succeeded", "succeeded"), secret="whsec_other"),
    ],
)
def test_a_bad_signature_is_unauthenticated(webhooks, header) -> None:
    with pytest.raises(Unauthenticated) as raised:
        webhooks.parse(event("payment_intent.succeeded", "succeeded"), header)
    assert raised.value.reason == "WEBHOOK_SIGNATURE_INVALID"


def test_the_age_of_the_signature_is_judged_by_our_clock() -> None:
    payload = event("payment_intent.succeeded", "succeeded")
    header = sign(payload, at=NOW - timedelta(minutes=6))
    with pytest.raises(Unauthenticated) as raised:
        StripeWebhooks(SECRET, FrozenClock(NOW)).parse(payload, header)
    assert raised.value.reason == "WEBHOOK_SIGNATURE_EXPIRED"
    lenient = StripeWebhooks(SECRET, FrozenClock(NOW), tolerance=timedelta(minutes=10))
    assert lenient.parse(payload, header) is not None


def test_a_signed_body_that_is_not_json_is_invalid(webhooks: StripeWebhooks) -> None:
    payload = b"not json"
    with pytest.raises(InvalidArgument):
        webhooks.parse(payload, sign(payload))

"""Inbound Stripe webhooks: the Stripe-Signature header verified, PaymentIntent events parsed.

The SDK checks the signature; the age of the signed timestamp is checked against our clock (the
SDK would read the wall clock), with Stripe's default tolerance of five minutes unless told.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe

from billing_svc.payments.gateways.port import ChargeResult
from billing_svc.payments.gateways.stripe_gateway import METADATA_KEY, intent_result
from core.clock import Clock
from core.errors import InvalidArgument, Unauthenticated

HANDLED = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.processing",
        "payment_intent.canceled",
    }
)
MAX_EVENT_ID = 128  # gateway_events.event_id, and the audit rows' request_id


@dataclass(frozen=True)
class GatewayEvent:
    event_id: str  # Stripe's evt_ id: Stripe may deliver an event more than once
    idempotency_key: str  # the payment attempt's key, from the intent's metadata
    result: ChargeResult


class StripeWebhooks:
    def __init__(self, secret: str, clock: Clock, *, tolerance: timedelta = timedelta(minutes=5)) -> None:
        self._secret = secret
        self._clock = clock
        self._tolerance = tolerance

    def parse(self, payload: bytes, signature_header: str | None) -> GatewayEvent | None:
        """The event, or None for one we do not act on (another type, an intent Tally did not make).

        Raises Unauthenticated when the signature does not verify or is too old."""
        return event_of(self.verify(payload, signature_header))

    def verify(self, payload: bytes, signature_header: str | None) -> dict[str, Any]:
        """The event as Stripe sent it, once its signature verifies and is recent enough.

        Raises Unauthenticated (WEBHOOK_SIGNATURE_INVALID, _EXPIRED), InvalidArgument for a signed
        body that is not a JSON event."""
        try:
            # Tolerance 0: the SDK skips its own wall-clock age check; ours follows.
            event = stripe.Webhook.construct_event(payload, signature_header, self._secret, tolerance=0)
        except stripe.SignatureVerificationError as exc:
            raise Unauthenticated(
                f"Stripe-Signature does not verify: {exc.user_message}", reason="WEBHOOK_SIGNATURE_INVALID"
            ) from None
        except ValueError:
            raise InvalidArgument([], message="the webhook body is not JSON") from None
        self._check_age(signature_header or "")
        data: dict[str, Any] = event.to_dict()
        if not isinstance(data.get("id"), str) or not 0 < len(data["id"]) <= MAX_EVENT_ID:
            raise InvalidArgument([], message="the webhook body is not a Stripe event: no id, or a long one")
        return data

    def _check_age(self, header: str) -> None:
        stamps = [part[2:] for part in header.split(",") if part.startswith("t=")]
        signed_at = datetime.fromtimestamp(int(stamps[0]), UTC)  # the SDK has verified it is there
        if signed_at < self._clock.now() - self._tolerance:
            raise Unauthenticated(
                f"Stripe-Signature is older than {self._tolerance}: a replay?",
                reason="WEBHOOK_SIGNATURE_EXPIRED",
            )


def event_of(data: dict[str, Any]) -> GatewayEvent | None:
    """A verified event's meaning for a payment attempt; None for one we do not act on."""
    if data.get("type") not in HANDLED:
        return None
    intent = (data.get("data") or {}).get("object") or {}
    key = (intent.get("metadata") or {}).get(METADATA_KEY)
    if not key:
        return None
    return GatewayEvent(str(data["id"]), str(key), intent_result(intent))

"""gRPC face of the payment gateways' webhooks (GatewayEventService): check the signature over the
raw body first, then record the event and settle its attempt (inbound.receive_gateway_event).

The signature is the authentication (the method is public in its access policy); like every
anonymous caller, a sender is rate limited by its address before this runs. Each answer is counted
by outcome (`processed`, `duplicate`, `ignored`, `rejected`): tally_gateway_events_total.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.api import httpbody_pb2

from billing_svc.payments.collect import PaymentDeps
from billing_svc.payments.gateways.stripe_webhooks import StripeWebhooks, event_of
from billing_svc.payments.inbound import REJECTED, EventCounts, receive_gateway_event
from core.errors import InvalidArgument, TallyError, Unauthenticated, Unavailable
from tally.billing.v1 import payment_pb2, payment_pb2_grpc

log = logging.getLogger("tally.payments.inbound")

STRIPE = "stripe"
# The header Stripe signs with; the REST gateway passes it on as this metadata key.
STRIPE_SIGNATURE = "stripe-signature"
SIGNATURE_FIELD = "Stripe-Signature"


class GatewayEventServicer(payment_pb2_grpc.GatewayEventServiceServicer):
    def __init__(self, deps: PaymentDeps, stripe: StripeWebhooks | None, counts: EventCounts) -> None:
        self._deps = deps
        self._stripe = stripe  # None: TALLY_STRIPE_WEBHOOK_SECRET is not set
        self._counts = counts

    async def ReceiveStripeEvent(
        self, request: httpbody_pb2.HttpBody, context: grpc.aio.ServicerContext
    ) -> payment_pb2.ReceiveStripeEventResponse:
        if self._stripe is None:
            raise Unavailable(
                "Stripe webhooks are not configured: set TALLY_STRIPE_WEBHOOK_SECRET to the endpoint's "
                "signing secret",
                reason="WEBHOOK_NOT_CONFIGURED",
            )
        data = self._verified(self._stripe, request.data, _first(context, STRIPE_SIGNATURE))
        outcome = await receive_gateway_event(self._deps, STRIPE, str(data["id"]), event_of(data))
        self._counts.count(STRIPE, outcome.value)
        return payment_pb2.ReceiveStripeEventResponse(outcome=outcome.value)

    def _verified(self, stripe: StripeWebhooks, body: bytes, signature: str | None) -> dict[str, Any]:
        """The event once its signature verifies; INVALID_ARGUMENT otherwise, counted and logged
        by reason only (the body is never logged)."""
        try:
            return stripe.verify(body, signature)
        except Unauthenticated as refused:
            self._refused(refused)
            # Stripe's convention for a signature that fails: a bad request (400), not a 401.
            raise InvalidArgument.field(SIGNATURE_FIELD, refused.message, reason=refused.reason) from None
        except InvalidArgument as refused:
            self._refused(refused)
            raise

    def _refused(self, refused: TallyError) -> None:
        self._counts.count(STRIPE, REJECTED)
        log.warning("Stripe webhook refused: %s", refused.reason)


def _first(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None

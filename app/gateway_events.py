"""Inbound gateway webhooks on the HTTP port: `POST /v1/gatewayEvents/stripe`.

Not a transcoded RPC: Stripe signs the raw body, so the route reads it whole (within
`gateway_max_body_bytes`) and checks its Stripe-Signature header against `TALLY_STRIPE_WEBHOOK_SECRET`
before anything else is done with it. The signature is the authentication: no Tally token is asked
for. Like every anonymous caller, a sender is rate limited by its address (group `gateway_events`
of TALLY_RATE_LIMITS, else `default`), before the body is read.

Answers, each counted in `tally_gateway_events_total{gateway,outcome}`:

* 200 `{"outcome": "processed"}`: the event settled its payment attempt (billing_svc.payments.inbound);
* 200 `duplicate`: received before, nothing changed; 200 `ignored`: not about a payment Tally made
  through this gateway, or a type not acted on (recorded, so its replays are duplicates);
* 400 `rejected`: WEBHOOK_SIGNATURE_INVALID, WEBHOOK_SIGNATURE_EXPIRED (older than five minutes on our
  clock), or a signed body that is not an event; nothing is written, and the body is never logged;
* 503 WEBHOOK_NOT_CONFIGURED when no secret is set (nothing is read); 413 past the size limit; 429.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from billing_svc.payments.collect import PaymentDeps
from billing_svc.payments.gateways.stripe_webhooks import StripeWebhooks, event_of
from billing_svc.payments.inbound import receive_gateway_event
from core import errors
from core.clock import Clock
from core.forwarding import IpNetwork, client_address, parse_address
from core.metrics import Metrics
from core.request_context import new_request_id
from core.settings import Settings
from core.status import code_of, http_status, to_status
from gateway.app import REQUEST_ID_KEY, read_body
from gateway.errors import GatewayError, error_headers, error_response
from interceptors.rate_limit import RateLimiter, address_key, rate_limit_exceeded

log = logging.getLogger("tally.payments.inbound")

STRIPE_PATH = "/v1/gatewayEvents/stripe"
RATE_GROUP = "gateway_events"
REJECTED = "rejected"


def gateway_event_routes(
    settings: Settings, payments: PaymentDeps, clock: Clock, metrics: Metrics, limiter: RateLimiter
) -> list[web.RouteDef]:
    secret = settings.stripe_webhook_secret
    webhooks = StripeWebhooks(secret.get_secret_value(), clock) if secret is not None else None
    trusted = tuple(settings.trusted_proxies)
    limit = settings.gateway_max_body_bytes

    async def receive_stripe(request: web.Request, request_id: str) -> web.Response:
        if webhooks is None:
            raise errors.Unavailable(
                "Stripe webhooks are not configured: set TALLY_STRIPE_WEBHOOK_SECRET to the endpoint's "
                "signing secret",
                reason="WEBHOOK_NOT_CONFIGURED",
            )
        await _charge(limiter, _client_key(request, trusted))
        body = await read_body(request, limit)
        try:
            data = webhooks.verify(body, request.headers.get("Stripe-Signature"))
        except (errors.Unauthenticated, errors.InvalidArgument) as refused:
            metrics.gateway_event("stripe", REJECTED)
            log.warning("Stripe webhook refused: %s", refused.reason, extra={"request_id": request_id})
            return _error(refused, request_id, http=400)  # Stripe's convention, not 401
        outcome = await receive_gateway_event(payments, "stripe", str(data["id"]), event_of(data))
        metrics.gateway_event("stripe", outcome.value)
        return web.json_response({"outcome": outcome.value}, headers={"X-Request-Id": request_id})

    return [web.post(STRIPE_PATH, _answering(receive_stripe))]


def _answering(
    handle: Callable[[web.Request, str], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler with Tally's errors and the gateway's own (413) answered as Status JSON."""

    async def answer(request: web.Request) -> web.Response:
        request_id = request.get(REQUEST_ID_KEY) or new_request_id(request.headers.get("X-Request-Id"))
        try:
            return await handle(request, request_id)
        except GatewayError as error:
            return error.response(request_id)
        except errors.TallyError as error:
            return _error(error, request_id)

    return answer


def _error(error: errors.TallyError, request_id: str, *, http: int | None = None) -> web.Response:
    status = to_status(error)
    # Retry-After from the RetryInfo of a 429; no WWW-Authenticate: no bearer token is wanted here.
    retry = error_headers(status, had_credentials=False).get("Retry-After")
    headers = {"X-Request-Id": request_id, **({"Retry-After": retry} if retry else {})}
    return error_response(status, http if http is not None else http_status(code_of(error)), headers)


def _client_key(request: web.Request, trusted: Sequence[IpNetwork]) -> str:
    client = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
    address = parse_address(client) if client else None
    return address_key(address) if address is not None else "unknown"


async def _charge(limiter: RateLimiter, key: str) -> None:
    decision = await limiter.check(RATE_GROUP, key, 1)
    if not decision.allowed:
        raise rate_limit_exceeded(RATE_GROUP, "address", decision.retry_after, limiter.limit_for(RATE_GROUP))

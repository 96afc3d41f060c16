"""The Stripe adapter, on the official SDK (StripeClient over aiohttp, async).

A charge is one PaymentIntent created with confirm=true and off_session=true (the customer is not
there), our idempotency key both as Stripe's Idempotency-Key and as metadata, so that a lookup can
find it. How Stripe's answers map, and why:

    succeeded                                     SUCCEEDED
    processing, requires_action/_confirmation/_capture   PENDING  (settled by lookup or webhook)
    requires_payment_method, canceled; CardError  DECLINED (decline code from the last error)
    InvalidRequestError (a missing payment method ...)   DECLINED (its code: retrying cannot help)
    RateLimitError, AuthenticationError, PermissionError FAILED   (refused before any work)
    connection refused or connect timeout          FAILED   (never reached Stripe)
    read timeout, dropped connection, 5xx          UNKNOWN  (Stripe calls a 500 indeterminate:
                                                   retry with the same key or look it up)
    IdempotencyError                              raises GatewayMisuse (a key reused: our bug)

Lookup uses PaymentIntent search on the metadata key. Stripe documents search as eventually
consistent (usually under a minute behind), so None right after an UNKNOWN does not prove the
charge never happened; re-sending the charge with the same key is the strictly consistent check.

A refund carries our key as metadata too. Stripe has no search for refunds, and none is needed:
`lookup_refund` lists the refunds of the PaymentIntent refunded (List all refunds, filtered by
`payment_intent`, newest first, 100 a page) and takes the one whose metadata holds the key. Refund
statuses (https://docs.stripe.com/api/refunds/object): succeeded is SUCCEEDED; pending and
requires_action are PENDING (looked up again later); failed and canceled are DECLINED (Stripe gave
nothing back: the refund fails and its amount is released).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import stripe

from billing_svc.payments.gateways.port import (
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    GatewayMisuse,
    RefundRequest,
    RefundResult,
    RefundStatus,
)

METADATA_KEY = "tally_idempotency_key"

_INTENT_STATUSES = {
    "succeeded": ChargeStatus.SUCCEEDED,
    "processing": ChargeStatus.PENDING,
    "requires_action": ChargeStatus.PENDING,
    "requires_confirmation": ChargeStatus.PENDING,
    "requires_capture": ChargeStatus.PENDING,
    "requires_payment_method": ChargeStatus.DECLINED,
    "canceled": ChargeStatus.DECLINED,
}
_REFUND_STATUSES = {
    "succeeded": RefundStatus.SUCCEEDED,
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "failed": RefundStatus.DECLINED,
    "canceled": RefundStatus.DECLINED,
}


class StripeGateway:
    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_network_retries: int = 0,
    ) -> None:
        # No retries by default: the caller's retry policy owns them (same key, recorded attempts).
        self._http = stripe.AIOHTTPClient(
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        )
        self._client = stripe.StripeClient(
            api_key,
            http_client=self._http,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=max_network_retries,
        )

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        params: dict[str, Any] = {
            "amount": request.amount_minor,
            "currency": request.currency_code.lower(),
            "payment_method": request.payment_method,
            "confirm": True,
            "off_session": True,
            # Off-session: no customer to send through a redirect, so no return_url is needed.
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "description": request.description,
            "metadata": {**request.metadata, METADATA_KEY: request.idempotency_key},
        }
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]  # a plain dict of the documented parameters
                {"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as exc:
            return _charge_error(exc)
        return intent_result(intent)

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        quoted = idempotency_key.replace("\\", "\\\\").replace("'", "\\'")
        try:
            found = await self._client.v1.payment_intents.search_async(
                {"query": f"metadata['{METADATA_KEY}']:'{quoted}'", "limit": 1}
            )
        except stripe.StripeError as exc:
            return ChargeResult(ChargeStatus.UNKNOWN, None, None, f"lookup failed: {_describe(exc)}")
        return intent_result(found.data[0]) if found.data else None

    async def refund(self, request: RefundRequest) -> RefundResult:
        params = {
            "payment_intent": request.charge_reference,
            "amount": request.amount_minor,
            "metadata": {METADATA_KEY: request.idempotency_key},
        }
        try:
            refund = await self._client.v1.refunds.create_async(
                params,  # type: ignore[arg-type]  # a plain dict of the documented parameters
                {"idempotency_key": request.idempotency_key},
            )
        except stripe.IdempotencyError as exc:
            raise GatewayMisuse(f"Stripe refused a reused idempotency key: {exc.user_message}") from exc
        except (stripe.InvalidRequestError, stripe.CardError) as exc:
            return RefundResult(RefundStatus.DECLINED, None, _describe(exc))
        except stripe.StripeError as exc:
            status = RefundStatus.UNKNOWN if _maybe_processed(exc) else RefundStatus.FAILED
            return RefundResult(status, None, _describe(exc))
        return refund_result(refund)

    async def lookup_refund(self, idempotency_key: str, *, charge_reference: str) -> RefundResult | None:
        if not charge_reference:
            return None  # no charge, no refund of it (and an unfiltered list would be every refund)
        params: dict[str, Any] = {"payment_intent": charge_reference, "limit": 100}
        try:
            while True:
                page = await self._client.v1.refunds.list_async(params)  # type: ignore[arg-type]
                for refund in page.data:
                    if (refund.to_dict().get("metadata") or {}).get(METADATA_KEY) == idempotency_key:
                        return refund_result(refund)
                if not page.has_more or not page.data:
                    return None
                params = {**params, "starting_after": page.data[-1].id}
        except stripe.StripeError as exc:
            return RefundResult(RefundStatus.UNKNOWN, None, f"lookup failed: {_describe(exc)}")

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


def intent_result(found: stripe.StripeObject | Mapping[str, Any]) -> ChargeResult:
    """What a PaymentIntent (from a call, a search or a webhook) says about the charge."""
    intent = found.to_dict() if isinstance(found, stripe.StripeObject) else found
    status = _INTENT_STATUSES.get(str(intent.get("status")), ChargeStatus.PENDING)
    error = intent.get("last_payment_error") or {}
    decline_code = None
    if status is ChargeStatus.DECLINED:
        decline_code = error.get("decline_code") or error.get("code") or str(intent.get("status"))
    return ChargeResult(status, str(intent.get("id")), decline_code, str(error.get("message") or ""))


def refund_result(refund: stripe.Refund) -> RefundResult:
    """What a Refund object says about the refund."""
    status = _REFUND_STATUSES.get(str(refund.status), RefundStatus.PENDING)
    return RefundResult(status, refund.id, str(getattr(refund, "failure_reason", None) or ""))


def _charge_error(exc: stripe.StripeError) -> ChargeResult:
    if isinstance(exc, stripe.IdempotencyError):
        raise GatewayMisuse(f"Stripe refused a reused idempotency key: {exc.user_message}") from exc
    if isinstance(exc, stripe.CardError | stripe.InvalidRequestError):
        error = exc.error
        code = (error.decline_code if error else None) or exc.code or "declined"
        intent = error.payment_intent if error else None
        return ChargeResult(ChargeStatus.DECLINED, intent.id if intent else None, code, _describe(exc))
    status = ChargeStatus.UNKNOWN if _maybe_processed(exc) else ChargeStatus.FAILED
    return ChargeResult(status, None, None, _describe(exc))


def _maybe_processed(exc: stripe.StripeError) -> bool:
    """Could Stripe have acted on the request? Only errors that prove it did not say no."""
    if isinstance(exc, stripe.RateLimitError | stripe.AuthenticationError | stripe.PermissionError):
        return False
    if isinstance(exc, stripe.APIConnectionError):
        never_sent = aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
        return not isinstance(exc.__cause__, never_sent)
    return True  # 5xx (APIError) and anything unexpected


def _describe(exc: stripe.StripeError) -> str:
    return f"{type(exc).__name__}: {exc.user_message or exc.code or 'no message'}"

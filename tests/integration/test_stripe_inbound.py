"""Stripe's webhooks (GatewayEventService.ReceiveStripeEvent) on each backend: a payment left pending
at the Stripe stand-in (a requires_action intent) is settled by a signed event, once; what is tampered
with, too old, not ours or not configured changes nothing.

Over REST through `tally serve`'s own HTTP port and through a stand-alone `tally gateway` in front of
the gRPC port (the `via` parameter), and over gRPC with the signature as metadata and no token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from google.api import httpbody_pb2
from pydantic import SecretStr
from sqlalchemy import func, select

from app.gateway_server import StandaloneGateway
from app.server import App
from billing_svc.payments.tables import GatewayEventRow
from core import db
from core.audit import AuditEventRow
from core.settings import RateLimit, Settings
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc, payment_pb2_grpc
from tally.billing.v1 import payment_pb2 as pb
from tests.integration.test_payments import _events, _open_invoice
from tests.stripe_standin import API_KEY as STRIPE_KEY
from tests.stripe_standin import StandinState, running_standin
from tests.support import channel_as, details, failing, mint, serving

WEBHOOK_SECRET = "whsec_inbound_test"
PATH = "/v1/gatewayEvents/stripe"
Status = pb.Payment.Status
VIA = ["serve", "gateway"]  # the HTTP port of `tally serve`, or a stand-alone `tally gateway`


@dataclass
class Stripe:
    app: App
    channel: grpc.aio.Channel
    standin: StandinState
    http_port: int  # where REST calls go

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}{PATH}"


@pytest.fixture(params=VIA)
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def rest_port(app: App, via: str) -> AsyncIterator[int]:
    """The HTTP port REST callers use: the app's own, or a stand-alone gateway's in front of it."""
    if via == "serve":
        yield app.http_port
        return
    gateway = StandaloneGateway(app.settings, f"127.0.0.1:{app.port}", health_ttl=0)
    await gateway.start()
    try:
        yield gateway.port
    finally:
        await gateway.stop()


@pytest.fixture
async def stripe(settings: Settings, via: str) -> AsyncIterator[Stripe]:
    async with running_standin() as (standin_url, standin):
        configured = settings.model_copy(
            update={
                "stripe_api_key": SecretStr(STRIPE_KEY),
                "stripe_api_base": standin_url,
                "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
                "payment_gateway_default": "stripe",
            }
        )
        async with (
            serving(configured) as app,
            channel_as(app, mint(app)) as channel,
            rest_port(app, via) as port,
        ):
            yield Stripe(app, channel, standin, port)


def sign(payload: bytes, *, at: float | None = None, secret: str = WEBHOOK_SECRET) -> str:
    """Stripe's scheme: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<payload>">`."""
    stamp = int(time.time() if at is None else at)
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def event(kind: str, intent: dict[str, Any], **changes: Any) -> bytes:
    body = {
        "id": f"evt_{secrets.token_hex(8)}",
        "object": "event",
        "type": kind,
        "data": {"object": {**intent, **changes}},
    }
    return json.dumps(body).encode()


async def deliver(stripe: Stripe, payload: bytes, signature: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Stripe-Signature": signature or sign(payload)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stripe.url, data=payload, headers=headers) as response,
    ):
        answer: dict[str, Any] = await response.json()
        return response.status, answer


async def pending_payment(stripe: Stripe, n: int) -> tuple[ipb.Invoice, pb.Payment, dict[str, Any]]:
    """An open invoice and its payment left PENDING by Stripe (requires_action), with the intent."""
    invoice = await _open_invoice(stripe.channel, n)
    payments = payment_pb2_grpc.PaymentServiceStub(stripe.channel)
    payment = await payments.CreatePayment(
        pb.CreatePaymentRequest(invoice_id=invoice.id, payment_method="pm_requires_action")
    )
    assert payment.gateway == "stripe" and payment.status == Status.STATUS_PENDING
    key = payment.attempts[0].id
    (intent,) = [i for i in stripe.standin.intents.values() if i["metadata"]["tally_idempotency_key"] == key]
    return invoice, payment, intent


async def counts(app: App) -> tuple[int, int]:
    """Audit rows and recorded gateway events."""
    async with db.session_factory(db.read_only(app.engine))() as session:
        audits = await session.scalar(select(func.count()).select_from(AuditEventRow))
        received = await session.scalar(select(func.count()).select_from(GatewayEventRow))
    return int(audits or 0), int(received or 0)


async def get_payment(stripe: Stripe, payment_id: str) -> pb.Payment:
    payments = payment_pb2_grpc.PaymentServiceStub(stripe.channel)
    return await payments.GetPayment(pb.GetPaymentRequest(id=payment_id))


async def metrics(app: App) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{app.http_port}/metrics") as response,
    ):
        return await response.text()


async def test_a_signed_success_settles_the_pending_payment_once(stripe: Stripe) -> None:
    invoice, payment, intent = await pending_payment(stripe, 1)
    payload = event("payment_intent.succeeded", intent, status="succeeded")
    assert await deliver(stripe, payload) == (200, {"outcome": "processed"})

    paid = await get_payment(stripe, payment.id)
    assert paid.status == Status.STATUS_SUCCEEDED
    assert paid.attempts[0].status == pb.PaymentAttempt.STATUS_SUCCEEDED
    invoices = invoice_pb2_grpc.InvoiceServiceStub(stripe.channel)
    settled = await invoices.GetInvoice(ipb.GetInvoiceRequest(id=invoice.id))
    assert settled.status == ipb.Invoice.STATUS_PAID and settled.amount_paid.amount_minor == 10000
    assert await _events(stripe.app, "payment", payment.id) == ["payment.created", "payment.succeeded"]
    assert (await _events(stripe.app, "invoice", invoice.id))[-2:] == [
        "invoice.payment_recorded",
        "invoice.paid",
    ]
    async with db.session_factory(db.read_only(stripe.app.engine))() as session:
        actors = (
            await session.scalars(
                select(AuditEventRow.actor).where(
                    AuditEventRow.resource_id == payment.id, AuditEventRow.action == "succeeded"
                )
            )
        ).all()
    assert actors == ["gateway:stripe"]

    before = await counts(stripe.app)
    events_before = await _events(stripe.app, "invoice", invoice.id)
    assert await deliver(stripe, payload) == (200, {"outcome": "duplicate"})  # Stripe redelivers
    assert await counts(stripe.app) == before
    assert await _events(stripe.app, "invoice", invoice.id) == events_before
    assert await get_payment(stripe, payment.id) == paid
    exposed = await metrics(stripe.app)
    assert 'tally_gateway_events_total{gateway="stripe",outcome="processed"} 1.0' in exposed
    assert 'tally_gateway_events_total{gateway="stripe",outcome="duplicate"} 1.0' in exposed


async def test_a_tampered_or_old_signature_changes_nothing(
    stripe: Stripe, caplog: pytest.LogCaptureFixture
) -> None:
    _, payment, intent = await pending_payment(stripe, 2)
    payload = event("payment_intent.succeeded", intent, status="succeeded")
    before = await counts(stripe.app)
    tampered = payload.replace(b'"succeeded"', b'"succeeded" ', 1)
    status, answer = await deliver(stripe, tampered, sign(payload))
    assert status == 400 and answer["details"][0]["reason"] == "WEBHOOK_SIGNATURE_INVALID"
    status, answer = await deliver(stripe, payload, sign(payload, at=time.time() - 600))
    assert status == 400 and answer["details"][0]["reason"] == "WEBHOOK_SIGNATURE_EXPIRED"
    status, answer = await deliver(stripe, payload, sign(payload, secret="whsec_someone_else"))
    assert status == 400 and answer["details"][0]["reason"] == "WEBHOOK_SIGNATURE_INVALID"
    assert await counts(stripe.app) == before
    assert (await get_payment(stripe, payment.id)).status == Status.STATUS_PENDING
    assert intent["id"] not in caplog.text  # the body is never logged
    assert 'outcome="rejected"} 3.0' in await metrics(stripe.app)
    # None of them was recorded as received: the genuine delivery still acts.
    assert await deliver(stripe, payload) == (200, {"outcome": "processed"})


async def test_events_tally_does_not_act_on_are_ignored_and_recorded(stripe: Stripe) -> None:
    _, payment, intent = await pending_payment(stripe, 3)
    foreign = event(
        "payment_intent.succeeded",
        intent,
        status="succeeded",
        metadata={"tally_idempotency_key": "pat_nobody"},
    )
    untagged = event("payment_intent.succeeded", intent, status="succeeded", metadata={})
    other_type = event("charge.refunded", intent)
    _, received = await counts(stripe.app)
    for payload in (foreign, untagged, other_type):
        assert await deliver(stripe, payload) == (200, {"outcome": "ignored"})
    assert await deliver(stripe, foreign) == (200, {"outcome": "duplicate"})
    assert (await counts(stripe.app))[1] == received + 3
    assert (await get_payment(stripe, payment.id)).status == Status.STATUS_PENDING


async def test_a_payment_failed_event_fails_the_payment(stripe: Stripe) -> None:
    invoice, payment, intent = await pending_payment(stripe, 4)
    error = {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"}
    payload = event(
        "payment_intent.payment_failed", intent, status="requires_payment_method", last_payment_error=error
    )
    assert await deliver(stripe, payload) == (200, {"outcome": "processed"})
    failed = await get_payment(stripe, payment.id)
    assert (failed.status, failed.failure_code) == (Status.STATUS_FAILED, "insufficient_funds")
    assert await _events(stripe.app, "payment", payment.id) == ["payment.created", "payment.failed"]
    assert (await _events(stripe.app, "invoice", invoice.id))[-1] == "invoice.payment_failed"
    # A success arriving after the failure leaves the settled payment as it is.
    late = event("payment_intent.succeeded", intent, status="succeeded")
    assert await deliver(stripe, late) == (200, {"outcome": "processed"})
    assert await get_payment(stripe, payment.id) == failed


async def test_concurrent_redeliveries_settle_once(stripe: Stripe) -> None:
    invoice, payment, intent = await pending_payment(stripe, 5)
    payload = event("payment_intent.succeeded", intent, status="succeeded")
    answers = await asyncio.gather(*(deliver(stripe, payload) for _ in range(4)))
    outcomes = sorted(answer["outcome"] for status, answer in answers if status == 200)
    assert outcomes == ["duplicate", "duplicate", "duplicate", "processed"]
    assert await _events(stripe.app, "payment", payment.id) == ["payment.created", "payment.succeeded"]
    assert (await _events(stripe.app, "invoice", invoice.id)).count("invoice.paid") == 1


async def test_without_a_secret_the_route_reads_nothing(settings: Settings, via: str) -> None:
    unconfigured = settings.model_copy(update={"gateway_max_body_bytes": 1024})
    async with serving(unconfigured) as app, rest_port(app, via) as port:
        url = f"http://127.0.0.1:{port}{PATH}"
        async with aiohttp.ClientSession() as session, session.post(url, data=b"{}") as response:
            assert response.status == 503
            assert (await response.json())["details"][0]["reason"] == "WEBHOOK_NOT_CONFIGURED"
    configured = settings.model_copy(
        update={"gateway_max_body_bytes": 1024, "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET)}
    )
    async with serving(configured) as app, rest_port(app, via) as port, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}{PATH}"
        big = b"x" * 2048
        async with session.post(url, data=big, headers={"Stripe-Signature": sign(big)}) as response:
            assert response.status == 413
        async with session.post(url, data=b"{}") as response:  # no signature at all
            assert response.status == 400
            assert (await response.json())["details"][0]["reason"] == "WEBHOOK_SIGNATURE_INVALID"


async def test_senders_are_rate_limited_by_address_before_the_signature_is_checked(
    settings: Settings, via: str
) -> None:
    limits = {**settings.rate_limits, "gateway_events": RateLimit(rate=0.001, burst=2)}
    configured = settings.model_copy(
        update={"rate_limits": limits, "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET)}
    )
    async with serving(configured) as app, rest_port(app, via) as port, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}{PATH}"
        statuses = []
        for _ in range(3):
            async with session.post(url, data=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}) as response:
                statuses.append(response.status)
                answer = await response.json()
        assert statuses == [400, 400, 429]
        assert answer["details"][0]["reason"] == "RATE_LIMITED" and int(response.headers["Retry-After"]) > 0


# --- over gRPC: the body as google.api.HttpBody, the signature as metadata, no token --------------------


def http_body(payload: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="application/json", data=payload)


@pytest.mark.parametrize("via", ["serve"])  # no REST front is used
async def test_over_grpc_the_signature_is_metadata_and_no_token_is_asked_for(stripe: Stripe) -> None:
    """What `grpcurl -H 'stripe-signature: t=...,v1=...' -d '{"contentType": ..., "data": ...}'`
    sends: an anonymous call, authenticated by its signature alone."""
    _, payment, intent = await pending_payment(stripe, 6)
    payload = event("payment_intent.succeeded", intent, status="succeeded")
    async with channel_as(stripe.app, None) as anonymous:
        events = payment_pb2_grpc.GatewayEventServiceStub(anonymous)
        unsigned = await failing(events.ReceiveStripeEvent(http_body(payload)))
        assert unsigned.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = details(unsigned)
        assert found.reason == "WEBHOOK_SIGNATURE_INVALID" and "Stripe-Signature" in found.violations
        before = await counts(stripe.app)
        stale = [("stripe-signature", sign(payload, at=time.time() - 600))]
        expired = await failing(events.ReceiveStripeEvent(http_body(payload), metadata=stale))
        assert details(expired).reason == "WEBHOOK_SIGNATURE_EXPIRED"
        assert await counts(stripe.app) == before
        signed = [("stripe-signature", sign(payload))]
        answer = await events.ReceiveStripeEvent(http_body(payload), metadata=signed)
        assert answer.outcome == "processed"
        again = await events.ReceiveStripeEvent(http_body(payload), metadata=signed)
        assert again.outcome == "duplicate"
    assert (await get_payment(stripe, payment.id)).status == Status.STATUS_SUCCEEDED


async def test_the_rest_body_reaches_the_signature_check_byte_for_byte(stripe: Stripe) -> None:
    """The gateway passes the body unparsed: whitespace and key order Stripe chose are what it
    signed (a gateway that re-serialised the JSON would break every signature)."""
    _, payment, intent = await pending_payment(stripe, 7)
    body = json.loads(event("payment_intent.succeeded", intent, status="succeeded"))
    payload = ("{\n  " + json.dumps(body, indent=2, sort_keys=True)[1:]).encode()
    assert await deliver(stripe, payload) == (200, {"outcome": "processed"})
    assert (await get_payment(stripe, payment.id)).status == Status.STATUS_SUCCEEDED
    # A body that is not JSON at all, signed, is the method's own 400, not the gateway's JSON error.
    junk = b"\x00not json\xff"
    status, answer = await deliver(stripe, junk)
    assert status == 400 and answer["details"][0]["reason"] == "INVALID_ARGUMENT", answer

"""Payments through a real sandbox gateway process on loopback, on each backend: the attempt
protocol (success, decline, transient failure, timeout), counted at the gateway's /admin/stats;
refunds; PayInvoice through the gateway; the reconciler; who sees what; card numbers refused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2
from pydantic import SecretStr
from sqlalchemy import select, text

from app.server import App
from billing_svc.module import BillingServices
from billing_svc.payments.collect import CollectionOutcome, PaymentDeps, collect_invoice, reload
from billing_svc.payments.gateways.port import PaymentGateway
from billing_svc.payments.gateways.registry import GatewayRegistry
from billing_svc.payments.reconciler import PaymentReconciler
from billing_svc.payments.tables import PaymentAttemptRow
from billing_svc.payments.use_cases import RefundPayment, refund_payment
from core import db, outbox
from core.money import Money
from core.principal import SYSTEM, Role
from core.settings import Settings
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc, payment_pb2_grpc
from tally.billing.v1 import payment_pb2 as pb
from tests.billing_support import new_account, usd
from tests.integration.sandbox_support import CLIENT_TIMEOUT, PENDING_DELAY, TIMEOUT_DELAY, sandbox_process
from tests.integration.test_gateway import Gateway, bearer, call
from tests.integration.test_invoices import line, one_off
from tests.stripe_standin import API_KEY as STRIPE_KEY
from tests.stripe_standin import running_standin
from tests.support import channel_as, eventually, failing, mint, reason, serving

Status = pb.Payment.Status
Attempt = pb.PaymentAttempt.Status
CARD = "4242 4242 4242 4242"


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with sandbox_process("--timeout-delay", str(TIMEOUT_DELAY), "--pending-delay", str(PENDING_DELAY)) as url:
        yield url


@pytest.fixture
async def app(settings: Settings, sandbox_url: str) -> AsyncIterator[App]:
    """The real server, its payments going to the sandbox with the tests' short client timeout."""
    configured = settings.model_copy(
        update={
            "sandbox_gateway_url": sandbox_url,
            "payment_gateway_timeout_seconds": CLIENT_TIMEOUT,
            "payment_retry_delay_seconds": 0.01,
        }
    )
    async with serving(configured) as application:
        yield application


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_as(app, mint(app)) as chan:
        yield chan


def payments_of(app: App) -> PaymentDeps:
    billing = app.components.services["billing"]
    assert isinstance(billing, BillingServices)
    return billing.payments


async def stats(sandbox_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox_url}/admin/stats") as response:
        answer: dict[str, Any] = await response.json()
        return answer


async def refunds_made(sandbox_url: str, payment: pb.Payment) -> list[int]:
    """How many refunds the sandbox made under each of the payment's refunds' keys."""
    counted = (await stats(sandbox_url))["refunds_executed"]
    return [counted.get(refund.id, 0) for refund in payment.refunds]


async def audited(app: App, resource_id: str) -> list[str]:
    """The audit log's actions on a resource, oldest first."""
    async with app.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT action FROM audit_events WHERE resource_id = :id ORDER BY time, id"),
            {"id": resource_id},
        )
        return [row.action for row in rows]


async def executions(sandbox_url: str, payment: pb.Payment) -> list[int]:
    """How many charges the sandbox made under each attempt's key."""
    counted = (await stats(sandbox_url))["charges_executed"]
    return [counted.get(attempt.id, 0) for attempt in payment.attempts]


async def charges(sandbox_url: str, payments: Iterable[pb.Payment]) -> int:
    """How many charges the sandbox made for these payments, in all."""
    counted = (await stats(sandbox_url))["charges_executed"]
    return sum(counted.get(attempt.id, 0) for payment in payments for attempt in payment.attempts)


async def _open_invoice(channel: grpc.aio.Channel, n: int, price: str = "100.00") -> ipb.Invoice:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    account = await new_account(channel, n)
    return await invoices.CreateInvoice(one_off(account.id, line("Plan", price), finalize=True))


async def _events(app: App, resource_type: str, resource_id: str) -> list[str]:
    async with db.session_factory(db.read_only(app.engine))() as session:
        found = await outbox.read_events(session, 0, 10_000)
    return [e.type for e in found if e.resource_type == resource_type and e.resource_id == resource_id]


def charge(account_id: str, minor: int, token: str, **fields: Any) -> pb.CreatePaymentRequest:
    return pb.CreatePaymentRequest(account_id=account_id, amount=usd(minor), payment_method=token, **fields)


async def test_a_successful_payment_of_an_invoice_pays_it(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 1)
    payment = await payments.CreatePayment(
        pb.CreatePaymentRequest(invoice_id=invoice.id, payment_method="tok_success", description="June")
    )
    assert payment.id.startswith("pay_") and payment.status == Status.STATUS_SUCCEEDED
    assert payment.account_id == invoice.account_id and payment.invoice_id == invoice.id
    assert payment.amount == usd(10000) and payment.amount_refunded == usd(0)
    assert payment.gateway == "sandbox" and payment.payment_method == "tok_success"
    assert [a.status for a in payment.attempts] == [Attempt.STATUS_SUCCEEDED]
    assert payment.attempts[0].HasField("finish_time")
    assert await executions(sandbox_url, payment) == [1]

    paid = await invoices.GetInvoice(ipb.GetInvoiceRequest(id=invoice.id))
    assert paid.status == ipb.Invoice.STATUS_PAID and paid.amount_paid.amount_minor == 10000
    assert await _events(app, "payment", payment.id) == ["payment.created", "payment.succeeded"]
    assert (await _events(app, "invoice", invoice.id))[-2:] == ["invoice.payment_recorded", "invoice.paid"]
    assert await payments.GetPayment(pb.GetPaymentRequest(id=payment.id)) == payment
    metrics = f"http://127.0.0.1:{app.http_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(metrics) as response:
        exposed = await response.text()
    assert 'tally_payment_gateway_circuit_state{gateway="sandbox"} 0.0' in exposed


async def test_a_decline_is_not_retried(app: App, channel: grpc.aio.Channel, sandbox_url: str) -> None:
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    invoice = await _open_invoice(channel, 2)
    payment = await payments.CreatePayment(
        pb.CreatePaymentRequest(invoice_id=invoice.id, payment_method="tok_insufficient_funds")
    )
    assert payment.status == Status.STATUS_FAILED and payment.failure_code == "insufficient_funds"
    assert [a.status for a in payment.attempts] == [Attempt.STATUS_DECLINED]
    assert payment.attempts[0].decline_code == "insufficient_funds"
    assert await executions(sandbox_url, payment) == [1]
    assert await _events(app, "payment", payment.id) == ["payment.created", "payment.failed"]
    assert (await _events(app, "invoice", invoice.id))[-1] == "invoice.payment_failed"
    still = await invoice_pb2_grpc.InvoiceServiceStub(channel).GetInvoice(
        ipb.GetInvoiceRequest(id=invoice.id)
    )
    assert still.status == ipb.Invoice.STATUS_OPEN and still.amount_paid.amount_minor == 0


async def test_a_transient_failure_is_retried_with_new_attempts_then_given_up(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    account = await new_account(channel, 3)
    payment = await payments.CreatePayment(charge(account.id, 500, "tok_error"))
    assert payment.status == Status.STATUS_FAILED and payment.failure_code == "gateway_unavailable"
    assert [a.status for a in payment.attempts] == [Attempt.STATUS_FAILED] * 3  # TALLY_PAYMENT_RETRY_ATTEMPTS
    assert len({a.id for a in payment.attempts}) == 3  # a new key each: the last certainly did not charge
    assert await executions(sandbox_url, payment) == [0, 0, 0]
    assert await _events(app, "payment", payment.id) == ["payment.created", "payment.failed"]


async def test_a_timeout_is_retried_with_the_same_key_and_charged_once(
    channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    account = await new_account(channel, 4)
    payment = await payments.CreatePayment(charge(account.id, 700, "tok_timeout"))
    # The first call timed out (unknown); the retry under the same key got the stored charge.
    assert payment.status == Status.STATUS_SUCCEEDED
    assert [a.status for a in payment.attempts] == [Attempt.STATUS_SUCCEEDED]
    assert await executions(sandbox_url, payment) == [1]


async def test_collect_invoice_says_how_it_went(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    deps = payments_of(app)
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    invoice = await _open_invoice(channel, 5, "12.34")
    settings = pb.PaymentSettings(account_id=invoice.account_id, default_payment_method="tok_decline")
    await payments.UpdatePaymentSettings(pb.UpdatePaymentSettingsRequest(settings=settings))
    assert await collect_invoice(deps, SYSTEM, invoice.id) is CollectionOutcome.DECLINED
    assert (
        await collect_invoice(deps, SYSTEM, invoice.id, payment_method="tok_success")
        is CollectionOutcome.PAID
    )
    assert await collect_invoice(deps, SYSTEM, invoice.id) is CollectionOutcome.NOTHING_DUE
    listed = await payments.ListPayments(pb.ListPaymentsRequest(invoice_id=invoice.id))
    assert [p.status for p in listed.payments] == [Status.STATUS_SUCCEEDED, Status.STATUS_FAILED]
    assert await charges(sandbox_url, listed.payments) == 2

    other = await _open_invoice(channel, 6)
    assert await collect_invoice(deps, SYSTEM, other.id, payment_method="tok_error") is (
        CollectionOutcome.GATEWAY_UNAVAILABLE
    )
    assert (
        await collect_invoice(deps, SYSTEM, other.id, payment_method="tok_delayed")
        is CollectionOutcome.PENDING
    )
    # One charge at a time per invoice: while one is pending, nothing else is sent.
    assert (
        await collect_invoice(deps, SYSTEM, other.id, payment_method="tok_success")
        is CollectionOutcome.PENDING
    )
    error = await failing(
        payments.CreatePayment(pb.CreatePaymentRequest(invoice_id=other.id, payment_method="tok_success"))
    )
    assert (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "PAYMENT_EXCEEDS_REMAINING"
    )


async def test_refunds_in_full_and_in_part_never_more_than_paid(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    account = await new_account(channel, 7)
    payment = await payments.CreatePayment(charge(account.id, 1000, "tok_success"))
    part = await payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id, amount=usd(300), reason="dup"))
    assert part.amount_refunded == usd(300) and part.status == Status.STATUS_SUCCEEDED
    assert [(r.amount.amount_minor, r.status, r.reason) for r in part.refunds] == [
        (300, pb.PaymentRefund.STATUS_SUCCEEDED, "dup")
    ]
    error = await failing(payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id, amount=usd(701))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "REFUND_EXCEEDS_PAYMENT"
    rest = await payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id))  # all that remains
    assert rest.amount_refunded == usd(1000) and [r.amount.amount_minor for r in rest.refunds] == [300, 700]
    error = await failing(payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id)))
    assert reason(error) == "REFUND_EXCEEDS_PAYMENT"
    assert (await stats(sandbox_url))["total_refunded_minor"]["USD"] >= 1000
    assert await _events(app, "payment", payment.id) == [
        "payment.created",
        "payment.succeeded",
        "payment.refunded",
        "payment.refunded",
    ]
    failed = await payments.CreatePayment(charge(account.id, 1000, "tok_decline"))
    error = await failing(payments.RefundPayment(pb.RefundPaymentRequest(id=failed.id)))
    assert reason(error) == "INVALID_STATE"


async def test_pay_invoice_through_the_gateway(app: App, channel: grpc.aio.Channel, sandbox_url: str) -> None:
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await _open_invoice(channel, 8)
    declined = await invoices.PayInvoice(ipb.PayInvoiceRequest(id=invoice.id, payment_method="tok_decline"))
    assert declined.status == ipb.Invoice.STATUS_OPEN
    paid = await invoices.PayInvoice(
        ipb.PayInvoiceRequest(id=invoice.id, payment_method="tok_success", request_id="pay-8")
    )
    assert paid.status == ipb.Invoice.STATUS_PAID and paid.amount_paid.amount_minor == 10000
    again = await invoices.PayInvoice(
        ipb.PayInvoiceRequest(id=invoice.id, payment_method="tok_success", request_id="pay-8")
    )
    assert again == paid  # a replay charges nothing
    listed = await payment_pb2_grpc.PaymentServiceStub(channel).ListPayments(
        pb.ListPaymentsRequest(invoice_id=invoice.id)
    )
    assert [p.status for p in listed.payments] == [Status.STATUS_SUCCEEDED, Status.STATUS_FAILED]
    assert await charges(sandbox_url, listed.payments) == 2
    # Without a payment method of its own or the account's, nothing is charged.
    other = await _open_invoice(channel, 9)
    error = await failing(invoices.PayInvoice(ipb.PayInvoiceRequest(id=other.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "PAYMENT_METHOD_REQUIRED"


async def test_the_reconciler_settles_an_attempt_left_in_flight(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    """A process that died between the charge and its recording left the attempt in flight; the
    reconciler looks it up by its key once it is due."""
    deps = payments_of(app)
    invoice = await _open_invoice(channel, 10)
    crashed: list[str] = []

    def die_after_charge(result: object) -> None:
        crashed.append("charged")
        raise Crash("after the charge")

    # Stand-in for the crash: the charge is made, and its answer never recorded.
    dying = replace(deps, after_charge=die_after_charge)
    with pytest.raises(Crash):
        await collect_invoice(dying, SYSTEM, invoice.id, payment_method="tok_success")
    never_sent = await _open_invoice(channel, 11)
    # A payment whose transaction 1 committed and whose charge was never sent.
    with pytest.raises(Crash):
        await collect_invoice(
            replace(deps, gateways=_NeverCalled(deps.gateways.factories, deps.gateways.clock)),
            SYSTEM,
            never_sent.id,
            payment_method="tok_success",
        )

    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    left = await payments.ListPayments(pb.ListPaymentsRequest(invoice_id=invoice.id))
    assert [a.status for a in left.payments[0].attempts] == [Attempt.STATUS_IN_FLIGHT]

    reconciler = PaymentReconciler(deps, clock=_Later(app, seconds=3600))
    settled = await reconciler.one_pass()
    assert settled.claimed == 2
    done = await payments.ListPayments(pb.ListPaymentsRequest(invoice_id=invoice.id))
    assert done.payments[0].status == Status.STATUS_SUCCEEDED
    assert await executions(sandbox_url, done.payments[0]) == [1]
    paid = await invoice_pb2_grpc.InvoiceServiceStub(channel).GetInvoice(ipb.GetInvoiceRequest(id=invoice.id))
    assert paid.status == ipb.Invoice.STATUS_PAID
    unsent = await payments.ListPayments(pb.ListPaymentsRequest(invoice_id=never_sent.id))
    assert (
        unsent.payments[0].status == Status.STATUS_FAILED and unsent.payments[0].failure_code == "not_charged"
    )
    assert (await reconciler.one_pass()).claimed == 0


class Crash(Exception):
    """A simulated crash of the process (an exception, so that the event loop survives it)."""


class _Later:
    """The app's clock, moved on: the reconciler sees the attempts as long overdue."""

    def __init__(self, app: App, *, seconds: float):
        self._clock = app.components.clock
        self._ahead = timedelta(seconds=seconds)

    def now(self) -> datetime:
        return self._clock.now() + self._ahead

    def move(self, by: timedelta) -> None:
        self._ahead += by


class _NeverCalled(GatewayRegistry):
    """A gateway registry whose gateway dies before sending: the charge never leaves."""

    def get(self, name: str) -> PaymentGateway:
        raise Crash("before the charge")


async def test_customers_see_only_their_own_payments(app: App, channel: grpc.aio.Channel) -> None:
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    mine = await new_account(channel, 12)
    theirs = await new_account(channel, 13)
    own = await payments.CreatePayment(charge(mine.id, 100, "tok_success"))
    other = await payments.CreatePayment(charge(theirs.id, 200, "tok_success"))
    async with channel_as(app, mint(app, role=Role.CUSTOMER, account_id=mine.id)) as customer:
        stub = payment_pb2_grpc.PaymentServiceStub(customer)
        assert (await stub.GetPayment(pb.GetPaymentRequest(id=own.id))).id == own.id
        error = await failing(stub.GetPayment(pb.GetPaymentRequest(id=other.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        listed = await stub.ListPayments(pb.ListPaymentsRequest())
        assert [p.id for p in listed.payments] == [own.id]
        error = await failing(stub.ListPayments(pb.ListPaymentsRequest(account_id=theirs.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = await failing(stub.CreatePayment(charge(mine.id, 100, "tok_success")))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    headers = bearer(mint(app, role=Role.CUSTOMER, account_id=mine.id))
    async with Gateway(app) as http:
        body, _ = await call(http, "GET", f"/v1/payments/{own.id}", 200, headers=headers)
        assert body["id"] == own.id and body["amount"]["amountMinor"] == "100"
        await call(http, "GET", f"/v1/payments/{other.id}", 404, headers=headers)
        body, _ = await call(http, "GET", "/v1/payments", 200, headers=headers)
        assert [p["id"] for p in body["payments"]] == [own.id]


async def test_a_card_number_is_refused_and_neither_stored_nor_logged(
    app: App, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    account = await new_account(channel, 14)
    for fields, where in (
        ({"payment_method": CARD}, "payment_method"),
        ({"payment_method": "tok_success", "description": f"card {CARD}"}, "description"),
        ({"payment_method": "tok_success", "metadata": {"note": CARD}}, "metadata['note']"),
    ):
        request = pb.CreatePaymentRequest(account_id=account.id, amount=usd(100), **fields)
        error = await failing(payments.CreatePayment(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert where in (error.details() or "") and "4242" not in (error.details() or "")
    settings = pb.PaymentSettings(account_id=account.id, default_payment_method=CARD.replace(" ", ""))
    error = await failing(payments.UpdatePaymentSettings(pb.UpdatePaymentSettingsRequest(settings=settings)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    invoice = await _open_invoice(channel, 15)
    error = await failing(
        invoice_pb2_grpc.InvoiceServiceStub(channel).PayInvoice(
            ipb.PayInvoiceRequest(id=invoice.id, payment_method=CARD)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert "4242 4242" not in caplog.text and "4242424242424242" not in caplog.text
    async with app.engine.connect() as connection:
        tables = ("payments", "payment_attempts", "payment_settings", "idempotency_keys", "audit_events")
        for table in tables:
            rows = (await connection.execute(text(f"SELECT * FROM {table}"))).all()  # noqa: S608
            assert not any("4242" in str(row) for row in rows), table
        attempts = (await connection.execute(select(PaymentAttemptRow))).all()
        assert attempts == []


async def test_a_request_id_replays_the_payment_and_never_charges_again(
    channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    account = await new_account(channel, 16)
    first = await payments.CreatePayment(charge(account.id, 900, "tok_success", request_id="buy-16"))
    again = await payments.CreatePayment(charge(account.id, 900, "tok_success", request_id="buy-16"))
    assert again == first and await executions(sandbox_url, first) == [1]
    error = await failing(payments.CreatePayment(charge(account.id, 901, "tok_success", request_id="buy-16")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await payments.ListPayments(pb.ListPaymentsRequest(account_id=account.id))
    assert [p.id for p in listed.payments] == [first.id]


async def test_the_gateway_is_the_accounts_else_the_currencys_else_the_default(
    settings: Settings, sandbox_url: str
) -> None:
    """EUR goes to Stripe (the local stand-in: no network reaches Stripe), USD to the sandbox, and an
    account's own setting wins; an unconfigured gateway is refused before anything is written."""
    async with running_standin() as (stripe_url, standin):
        configured = settings.model_copy(
            update={
                "sandbox_gateway_url": sandbox_url,
                "stripe_api_key": SecretStr(STRIPE_KEY),
                "stripe_api_base": stripe_url,
                "payment_gateway_by_currency": "EUR=stripe",
                "payment_gateway_timeout_seconds": CLIENT_TIMEOUT,
            }
        )
        async with serving(configured) as app, channel_as(app, mint(app)) as channel:
            payments = payment_pb2_grpc.PaymentServiceStub(channel)
            euro = await new_account(channel, 17, currency="EUR")
            paid = await payments.CreatePayment(
                pb.CreatePaymentRequest(
                    account_id=euro.id, amount=usd(500, "EUR"), payment_method="pm_card_visa"
                )
            )
            assert paid.gateway == "stripe" and paid.status == Status.STATUS_SUCCEEDED
            assert standin.created[paid.attempts[0].id] == 1
            dollar = await new_account(channel, 18)
            sandboxed = await payments.CreatePayment(charge(dollar.id, 500, "tok_success"))
            assert sandboxed.gateway == "sandbox" and sandboxed.status == Status.STATUS_SUCCEEDED
            await payments.UpdatePaymentSettings(
                pb.UpdatePaymentSettingsRequest(
                    settings=pb.PaymentSettings(account_id=dollar.id, gateway="stripe"),
                    update_mask=field_mask_pb2.FieldMask(paths=["gateway"]),
                )
            )
            own = await payments.CreatePayment(charge(dollar.id, 500, "pm_card_chargeDeclined"))
            assert own.gateway == "stripe" and own.failure_code == "generic_decline"
    async with serving(settings) as app, channel_as(app, mint(app)) as channel:  # no Stripe key here
        payments = payment_pb2_grpc.PaymentServiceStub(channel)
        account = await new_account(channel, 19)
        error = await failing(
            payments.UpdatePaymentSettings(
                pb.UpdatePaymentSettingsRequest(
                    settings=pb.PaymentSettings(account_id=account.id, gateway="stripe")
                )
            )
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(error) == "PAYMENT_GATEWAY_NOT_CONFIGURED"
        listed = await payments.ListPayments(pb.ListPaymentsRequest(account_id=account.id))
        assert list(listed.payments) == []


@pytest.mark.postgres
async def test_concurrent_refunds_never_exceed_the_charge(
    postgres_settings: Settings, postgres_clean: None, sandbox_url: str
) -> None:
    """Refunds hold their amount under the payment's row lock: of two refunds of 600 of a charge of
    1000 sent at once, one is made and the other refused, on real PostgreSQL concurrency."""
    configured = postgres_settings.model_copy(
        update={"sandbox_gateway_url": sandbox_url, "payment_gateway_timeout_seconds": CLIENT_TIMEOUT}
    )
    async with serving(configured) as app, channel_as(app, mint(app)) as channel:
        payments = payment_pb2_grpc.PaymentServiceStub(channel)
        account = await new_account(channel, 20)
        payment = await payments.CreatePayment(charge(account.id, 1000, "tok_success"))
        refund = pb.RefundPaymentRequest(id=payment.id, amount=usd(600))
        outcomes = await asyncio.gather(
            *(payments.RefundPayment(refund) for _ in range(2)), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(refused) == 1 and reason(refused[0]) == "REFUND_EXCEEDS_PAYMENT"
        final = await payments.GetPayment(pb.GetPaymentRequest(id=payment.id))
        assert final.amount_refunded == usd(600) and len(final.refunds) == 1


async def test_payment_settings_change_what_is_named(channel: grpc.aio.Channel) -> None:
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    account = await new_account(channel, 21)
    unset = await payments.GetPaymentSettings(pb.GetPaymentSettingsRequest(account_id=account.id))
    assert (unset.gateway, unset.default_payment_method, unset.HasField("update_time")) == ("", "", False)
    settings = pb.PaymentSettings(
        account_id=account.id, gateway="sandbox", default_payment_method="tok_success"
    )
    both = await payments.UpdatePaymentSettings(pb.UpdatePaymentSettingsRequest(settings=settings))
    assert (both.gateway, both.default_payment_method) == ("sandbox", "tok_success")
    cleared = await payments.UpdatePaymentSettings(
        pb.UpdatePaymentSettingsRequest(
            settings=pb.PaymentSettings(account_id=account.id),
            update_mask=field_mask_pb2.FieldMask(paths=["gateway"]),
        )
    )
    assert (cleared.gateway, cleared.default_payment_method) == ("", "tok_success")
    assert await payments.GetPaymentSettings(pb.GetPaymentSettingsRequest(account_id=account.id)) == cleared
    for request in (
        pb.UpdatePaymentSettingsRequest(settings=pb.PaymentSettings(account_id=account.id)),
        pb.UpdatePaymentSettingsRequest(settings=pb.PaymentSettings(account_id=account.id, gateway="paypal")),
    ):
        error = await failing(payments.UpdatePaymentSettings(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await failing(payments.GetPaymentSettings(pb.GetPaymentSettingsRequest(account_id="acct_nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_the_reconciler_settles_a_pending_charge_once_the_gateway_has(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    """A charge the gateway holds pending stays pending through lookups that find it pending (each
    due again later), and is recorded once the gateway settles it."""
    deps = payments_of(app)
    invoice = await _open_invoice(channel, 22)
    assert await collect_invoice(deps, SYSTEM, invoice.id, payment_method="tok_delayed") is (
        CollectionOutcome.PENDING
    )
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    later = _Later(app, seconds=0)
    reconciler = PaymentReconciler(deps, clock=later)

    async def settled() -> bool:
        later.move(deps.reconcile_after + timedelta(seconds=1))  # every pass finds the attempt due
        report = await reconciler.one_pass()
        assert report.claimed == 1 and report.failed == report.lost == 0, report
        found = await payments.ListPayments(pb.ListPaymentsRequest(invoice_id=invoice.id))
        return found.payments[0].status != Status.STATUS_PENDING

    await eventually(settled, within=10, what="the sandbox to settle the pending charge")
    done = (await payments.ListPayments(pb.ListPaymentsRequest(invoice_id=invoice.id))).payments[0]
    assert done.status == Status.STATUS_SUCCEEDED and await executions(sandbox_url, done) == [1]
    paid = await invoice_pb2_grpc.InvoiceServiceStub(channel).GetInvoice(ipb.GetInvoiceRequest(id=invoice.id))
    assert paid.status == ipb.Invoice.STATUS_PAID
    assert (await reconciler.one_pass()).claimed == 0


@pytest.mark.postgres
async def test_reconcilers_in_two_replicas_share_the_attempts(
    postgres_settings: Settings, postgres_clean: None, sandbox_url: str
) -> None:
    """Two reconcilers' passes at once (SKIP LOCKED): every attempt left in flight is claimed by one
    of them and recorded once."""
    configured = postgres_settings.model_copy(
        update={"sandbox_gateway_url": sandbox_url, "payment_gateway_timeout_seconds": CLIENT_TIMEOUT}
    )
    async with serving(configured) as app, channel_as(app, mint(app)) as channel:
        deps = payments_of(app)

        def die(result: object) -> None:
            raise Crash("after the charge")

        invoices = [await _open_invoice(channel, 30 + n) for n in range(6)]
        for invoice in invoices:
            with pytest.raises(Crash):
                await collect_invoice(
                    replace(deps, after_charge=die), SYSTEM, invoice.id, payment_method="tok_success"
                )
        later = _Later(app, seconds=3600)
        first, second = (PaymentReconciler(deps, clock=later, batch=4) for _ in range(2))
        reports = await asyncio.gather(first.one_pass(), second.one_pass())
        assert sum(r.claimed for r in reports) == 6 and sum(r.settled for r in reports) == 6
        assert all(r.lost == r.failed == 0 for r in reports)
        stub = payment_pb2_grpc.PaymentServiceStub(channel)
        for invoice in invoices:
            found = (await stub.ListPayments(pb.ListPaymentsRequest(invoice_id=invoice.id))).payments
            assert [p.status for p in found] == [Status.STATUS_SUCCEEDED]
            assert await executions(sandbox_url, found[0]) == [1]


Refund = pb.PaymentRefund.Status


async def test_a_refund_whose_answers_time_out_is_settled_by_the_reconciler_once(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    """Every call of the refund times out (the sandbox made it, answers too late): the refund stays
    pending, its amount held, until a reconciler pass, once it is due, finds it made at the gateway
    by its key and records it: refunded once, one event, one audit row."""
    deps = payments_of(app)
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    account = await new_account(channel, 40)
    payment = await payments.CreatePayment(charge(account.id, 800, "tok_refund_timeout"))
    pending = await payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id))
    assert [r.status for r in pending.refunds] == [Refund.STATUS_PENDING]
    assert pending.amount_refunded == usd(0) and await refunds_made(sandbox_url, pending) == [1]
    error = await failing(payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id, amount=usd(1))))
    assert reason(error) == "REFUND_EXCEEDS_PAYMENT"  # the pending refund holds all 800

    assert (await PaymentReconciler(deps).one_pass()).claimed == 0  # not due yet
    reconciler = PaymentReconciler(deps, clock=_Later(app, seconds=3600))
    report = await reconciler.one_pass()
    assert (report.claimed, report.settled, report.deferred, report.failed) == (1, 1, 0, 0)
    done = await payments.GetPayment(pb.GetPaymentRequest(id=payment.id))
    assert [r.status for r in done.refunds] == [Refund.STATUS_SUCCEEDED]
    assert done.refunds[0].id == pending.refunds[0].id and done.amount_refunded == usd(800)
    assert await refunds_made(sandbox_url, done) == [1]
    assert await _events(app, "payment", payment.id) == [
        "payment.created",
        "payment.succeeded",
        "payment.refunded",
    ]
    assert (await audited(app, payment.id)).count("refunded") == 1
    assert (await reconciler.one_pass()).claimed == 0  # settled: nothing is due any more


async def _refund_never_sent(app: App, channel: grpc.aio.Channel, n: int, minor: int | None) -> pb.Payment:
    """A payment of USD 6.00 with a refund (of `minor`, None: all) whose process died after
    committing it and before sending it."""
    deps = payments_of(app)
    account = await new_account(channel, n)
    payment = await payment_pb2_grpc.PaymentServiceStub(channel).CreatePayment(
        charge(account.id, 600, "tok_success")
    )
    dying = replace(deps, gateways=_NeverCalled(deps.gateways.factories, deps.gateways.clock))
    with pytest.raises(Crash):
        await refund_payment(
            dying,
            SYSTEM,
            RefundPayment(payment.id, None if minor is None else Money("USD", minor), "duplicate"),
        )
    return payment


async def test_a_refund_that_never_reached_the_gateway_fails_and_frees_its_amount(
    app: App, channel: grpc.aio.Channel, sandbox_url: str
) -> None:
    """A process that died after committing the refund and before sending it left it pending. The
    reconciler's lookup finds nothing under its key: while the call could still be on its way that
    proves nothing (left for later); after, the refund failed, and the full amount is refundable."""
    deps = payments_of(app)
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    payment = await _refund_never_sent(app, channel, 41, None)
    left = await payments.GetPayment(pb.GetPaymentRequest(id=payment.id))
    assert [r.status for r in left.refunds] == [Refund.STATUS_PENDING]

    later = _Later(app, seconds=3600)
    patient = PaymentReconciler(replace(deps, gateway_timeout=timedelta(hours=2)), clock=later)
    report = await patient.one_pass()
    assert (report.claimed, report.deferred) == (1, 1)
    still = await payments.GetPayment(pb.GetPaymentRequest(id=payment.id))
    assert [r.status for r in still.refunds] == [Refund.STATUS_PENDING]
    assert (await patient.one_pass()).claimed == 0  # backed off: due again a reconcile delay later

    later.move(deps.reconcile_after)
    report = await PaymentReconciler(deps, clock=later).one_pass()
    assert (report.claimed, report.settled) == (1, 1)
    failed = await payments.GetPayment(pb.GetPaymentRequest(id=payment.id))
    assert [r.status for r in failed.refunds] == [Refund.STATUS_FAILED]
    assert [r.message for r in (await reload(deps, payment.id)).refunds] == ["not_refunded"]
    assert failed.amount_refunded == usd(0) and await refunds_made(sandbox_url, failed) == [0]
    assert (await _events(app, "payment", payment.id))[-1] == "payment.refund_failed"
    assert (await audited(app, payment.id))[-1] == "refund_failed"

    whole = await payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id))  # all 600, again
    assert [r.status for r in whole.refunds] == [Refund.STATUS_FAILED, Refund.STATUS_SUCCEEDED]
    assert whole.amount_refunded == usd(600) and await refunds_made(sandbox_url, whole) == [0, 1]


async def test_a_refund_settled_inline_leaves_another_pending_one_to_the_reconciler(
    app: App, channel: grpc.aio.Channel
) -> None:
    """Two refunds of one payment: the first left pending by a crash, the second made at once. The
    second's recording neither takes the first off the reconciler's schedule nor makes it due
    sooner, and what the first held, once it failed, is refundable again."""
    deps = payments_of(app)
    payments = payment_pb2_grpc.PaymentServiceStub(channel)
    payment = await _refund_never_sent(app, channel, 42, 200)
    both = await payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id, amount=usd(100)))
    assert [r.status for r in both.refunds] == [Refund.STATUS_PENDING, Refund.STATUS_SUCCEEDED]
    error = await failing(payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id, amount=usd(301))))
    assert reason(error) == "REFUND_EXCEEDS_PAYMENT"  # 600 - 100 refunded - 200 held
    # Not made due any sooner either: its own sending could still be on its way.
    assert (await PaymentReconciler(deps).one_pass()).claimed == 0

    report = await PaymentReconciler(deps, clock=_Later(app, seconds=3600)).one_pass()
    assert (report.claimed, report.settled) == (1, 1)
    rest = await payments.RefundPayment(pb.RefundPaymentRequest(id=payment.id))
    assert [r.status for r in rest.refunds] == [
        Refund.STATUS_FAILED,
        Refund.STATUS_SUCCEEDED,
        Refund.STATUS_SUCCEEDED,
    ]
    assert rest.refunds[2].amount == usd(500) and rest.amount_refunded == usd(600)


@pytest.mark.postgres
async def test_two_reconcilers_settle_each_pending_refund_once(
    postgres_settings: Settings, postgres_clean: None, sandbox_url: str
) -> None:
    """Refunds left pending by a crash after the gateway refunded (three) and before it was called
    (three), settled by two reconcilers' passes at once (SKIP LOCKED): each claimed by one of them
    and recorded once, refunded at the gateway at most once."""
    configured = postgres_settings.model_copy(
        update={"sandbox_gateway_url": sandbox_url, "payment_gateway_timeout_seconds": CLIENT_TIMEOUT}
    )
    async with serving(configured) as app, channel_as(app, mint(app)) as channel:
        deps = payments_of(app)
        stub = payment_pb2_grpc.PaymentServiceStub(channel)

        def die(result: object) -> None:
            raise Crash("after the refund")

        crashed = {
            "after": replace(deps, after_refund=die),
            "before": replace(deps, gateways=_NeverCalled(deps.gateways.factories, deps.gateways.clock)),
        }
        made: dict[str, str] = {}
        for n in range(6):
            account = await new_account(channel, 50 + n)
            payment = await stub.CreatePayment(charge(account.id, 500, "tok_success"))
            when = "after" if n % 2 else "before"
            with pytest.raises(Crash):
                await refund_payment(crashed[when], SYSTEM, RefundPayment(payment.id, None, ""))
            made[payment.id] = when
        later = _Later(app, seconds=3600)
        first, second = (PaymentReconciler(deps, clock=later, batch=4) for _ in range(2))
        reports = await asyncio.gather(first.one_pass(), second.one_pass())
        assert sum(r.claimed for r in reports) == 6 and sum(r.settled for r in reports) == 6
        assert all(r.lost == r.failed == 0 for r in reports)
        for payment_id, when in made.items():
            found = await stub.GetPayment(pb.GetPaymentRequest(id=payment_id))
            refunded = when == "after"
            assert [r.status for r in found.refunds] == [
                Refund.STATUS_SUCCEEDED if refunded else Refund.STATUS_FAILED
            ]
            assert await refunds_made(sandbox_url, found) == [1 if refunded else 0]
            events = (await _events(app, "payment", payment_id))[2:]
            assert events == ["payment.refunded" if refunded else "payment.refund_failed"]
        assert (await first.one_pass()).claimed == 0

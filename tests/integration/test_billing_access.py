"""Who may call each billing RPC, read from the descriptors, over gRPC and REST, on each backend.

Every method of billing_svc.module.MODULE.services needs a case in CASES, so a new RPC without
one fails `test_every_billing_method_has_a_case`. The rules come from each method's
(tally.options.v1.access) policy: customers are refused methods without customer access and get
NOT_FOUND (never PERMISSION_DENIED) for another account's resources; service tokens need the
method's scopes; calls without a token are UNAUTHENTICATED. A public method (PUBLIC_METHODS, pinned)
is reached with any token or none: its own answer comes back, never an auth refusal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from app.server import App
from billing_svc.module import MODULE
from billing_svc.webhooks import domain as webhooks
from billing_svc.webhooks.tables import WebhookDeliveryRow
from core import db, ids
from core.principal import Role
from gateway.routes import Route, routes_of
from gateway.transcoder import takes_raw_body
from interceptors.policy import MethodPolicy, PolicyTable
from tally.billing.v1 import (
    invoice_pb2,
    invoice_pb2_grpc,
    meter_pb2,
    meter_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
    test_clock_pb2,
    test_clock_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
)
from tally.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from tests.billing_support import new_account, new_plan, usd
from tests.integration.test_gateway import Gateway
from tests.support import channel_as, mint

SERVICES = MODULE.services
POLICIES = PolicyTable.from_services(SERVICES)
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
ALL_SCOPES = POLICIES.scopes()
HTTP_OF = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
}


@dataclass(frozen=True)
class Seed:
    account_a: str
    account_b: str
    meter: str
    plan: str
    sub_a: str
    sub_b: str
    clock: str
    webhook: str
    delivery: str  # to a disabled endpoint: a redelivery is refused, and nothing is sent
    invoice_a: str
    invoice_b: str
    line_a: str
    credited_a: str  # a finalized invoice of A with a credit note
    credit_note_a: str
    credit_note_b: str
    payment_a: str  # failed (no gateway listens in this test): readable, not refundable
    payment_b: str


Case = Callable[[Seed], dict[str, Any]]
SUB = "/tally.subscription.v1.SubscriptionService/"
PLAN = "/tally.subscription.v1.PlanService/"
METER = "/tally.billing.v1.MeterService/"
CLOCK = "/tally.billing.v1.TestClockService/"
USAGE = "/tally.billing.v1.UsageService/"
INVOICE = "/tally.billing.v1.InvoiceService/"
_LINE = {"description": "Setup", "unitPrice": {"value": "10"}}
_CREDIT = {
    "lines": [{"description": "Refund", "amountMinor": "1"}],
    "reason": "REASON_OTHER",
    "refundMethod": "REFUND_METHOD_CREDIT_BALANCE",
}
HOOK = "/tally.billing.v1.WebhookService/"
PAY = "/tally.billing.v1.PaymentService/"
_AMOUNT = {"currencyCode": "USD", "amountMinor": "100"}
EVENTS = "/tally.billing.v1.EventService/"
GATEWAY_EVENTS = "/tally.billing.v1.GatewayEventService/"
_EVENT = {"accountId": "", "usageRecord": {"service": "seats-used", "unitsConsumed": {"value": "1"}}}

# One request per method, naming account A's resources (a customer of A calls with these).
CASES: dict[str, Case] = {
    METER + "CreateMeter": lambda s: {
        "meter": {"code": "api-calls", "displayName": "API calls", "aggregation": "AGGREGATION_SUM"}
    },
    METER + "GetMeter": lambda s: {"id": s.meter},
    METER + "ListMeters": lambda s: {},
    METER + "UpdateMeter": lambda s: {
        "meter": {"id": s.meter, "displayName": "Seats"},
        "updateMask": "displayName",
    },
    METER + "ArchiveMeter": lambda s: {"id": s.meter},
    PLAN + "CreatePlan": lambda s: {
        "plan": {
            "code": "other",
            "displayName": "Other",
            "currencyCode": "USD",
            "billingInterval": {"unit": "UNIT_MONTH", "count": 1},
            "baseFee": {"currencyCode": "USD", "amountMinor": "1000"},
        }
    },
    PLAN + "GetPlan": lambda s: {"id": s.plan},
    PLAN + "ListPlans": lambda s: {},
    PLAN + "UpdatePlan": lambda s: {
        "plan": {"id": s.plan, "displayName": "Pro"},
        "updateMask": "displayName",
    },
    PLAN + "ArchivePlan": lambda s: {"id": s.plan},
    SUB + "CreateSubscription": lambda s: {"subscription": {"accountId": s.account_a, "planId": s.plan}},
    SUB + "GetSubscription": lambda s: {"id": s.sub_a},
    SUB + "ListSubscriptions": lambda s: {"accountId": s.account_a},
    SUB + "UpdateSubscription": lambda s: {
        "subscription": {"id": s.sub_a, "quantity": 2},
        "updateMask": "quantity",
    },
    SUB + "CancelSubscription": lambda s: {"id": s.sub_a, "atPeriodEnd": True},
    SUB + "UncancelSubscription": lambda s: {"id": s.sub_a},
    SUB + "ChangeSubscription": lambda s: {"id": s.sub_a, "quantity": 2},
    SUB + "PreviewChange": lambda s: {"id": s.sub_a, "quantity": 2},
    SUB + "CancelScheduledChange": lambda s: {"id": s.sub_a},
    SUB + "PauseSubscription": lambda s: {"id": s.sub_a},
    SUB + "ResumeSubscription": lambda s: {"id": s.sub_a},
    SUB + "ListPendingInvoiceItems": lambda s: {"accountId": s.account_a},
    SUB + "GetEntitlements": lambda s: {"accountId": s.account_a},
    CLOCK + "CreateTestClock": lambda s: {"testClock": {"frozenTime": "2027-01-15T00:00:00Z"}},
    CLOCK + "GetTestClock": lambda s: {"id": s.clock},
    CLOCK + "ListTestClocks": lambda s: {},
    CLOCK + "DeleteTestClock": lambda s: {"id": s.clock},
    CLOCK + "AttachAccount": lambda s: {"id": s.clock, "accountId": s.account_a},
    CLOCK + "AdvanceTestClock": lambda s: {"id": s.clock, "frozenTime": "2027-02-15T00:00:00Z"},
    USAGE + "CreateUsageRecord": lambda s: {**_EVENT, "accountId": s.account_a},
    USAGE + "BatchCreateUsageRecords": lambda s: {"requests": [{**_EVENT, "accountId": s.account_a}]},
    USAGE + "StreamUsageRecords": lambda s: {
        "records": [{"sequence": 1, "request": {**_EVENT, "accountId": s.account_a}}]
    },
    USAGE + "ListUsageRecords": lambda s: {"accountId": s.account_a},
    USAGE + "GetUsageSummary": lambda s: {"accountId": s.account_a},
    INVOICE + "CreateInvoice": lambda s: {"accountId": s.account_a, "lines": [_LINE]},
    INVOICE + "GetInvoice": lambda s: {"id": s.invoice_a},
    INVOICE + "ListInvoices": lambda s: {
        "accountId": s.account_a,
        "createTimeStart": "2000-01-01T00:00:00Z",
        "createTimeEnd": "2999-01-01T00:00:00Z",
    },
    INVOICE + "AddInvoiceLine": lambda s: {"invoiceId": s.invoice_a, "line": _LINE},
    INVOICE + "RemoveInvoiceLine": lambda s: {"invoiceId": s.invoice_a, "lineId": s.line_a},
    INVOICE + "FinalizeInvoice": lambda s: {"id": s.invoice_a},
    INVOICE + "VoidInvoice": lambda s: {"id": s.invoice_a},
    INVOICE + "MarkInvoiceUncollectible": lambda s: {"id": s.invoice_a},
    INVOICE + "PayInvoice": lambda s: {"id": s.invoice_a, "paidOutOfBand": True},
    INVOICE + "RenderInvoice": lambda s: {"id": s.invoice_a},
    INVOICE + "CreateCreditNote": lambda s: {"invoiceId": s.credited_a, **_CREDIT},
    INVOICE + "GetCreditNote": lambda s: {"id": s.credit_note_a},
    INVOICE + "ListCreditNotes": lambda s: {"invoiceId": s.credited_a},
    PAY + "CreatePayment": lambda s: {"accountId": s.account_a, "amount": _AMOUNT, "paymentMethod": "tok_x"},
    PAY + "GetPayment": lambda s: {"id": s.payment_a},
    PAY + "ListPayments": lambda s: {"accountId": s.account_a},
    PAY + "RefundPayment": lambda s: {"id": s.payment_a},
    PAY + "GetPaymentSettings": lambda s: {"accountId": s.account_a},
    PAY + "UpdatePaymentSettings": lambda s: {
        "settings": {"accountId": s.account_a, "defaultPaymentMethod": "tok_x"},
        "updateMask": "defaultPaymentMethod",
    },
    HOOK + "CreateWebhookEndpoint": lambda s: {"webhookEndpoint": {"url": "https://93.184.216.34/hook"}},
    HOOK + "GetWebhookEndpoint": lambda s: {"id": s.webhook},
    HOOK + "ListWebhookEndpoints": lambda s: {},
    HOOK + "DisableWebhookEndpoint": lambda s: {"id": s.webhook},
    HOOK + "EnableWebhookEndpoint": lambda s: {"id": s.webhook},
    HOOK + "ListWebhookDeliveries": lambda s: {"endpointId": s.webhook, "status": "STATUS_FAILED"},
    HOOK + "GetWebhookDelivery": lambda s: {"id": s.delivery},
    HOOK + "ListWebhookDeliveryAttempts": lambda s: {"deliveryId": s.delivery},
    HOOK + "RedeliverWebhook": lambda s: {"deliveryId": s.delivery},
    EVENTS + "ListEvents": lambda s: {"accountId": s.account_a},
    EVENTS + "WatchEvents": lambda s: {"accountId": s.account_a},
    # A google.api.HttpBody (the JSON mapping's base64 for `data`): over REST, the raw body `{}`.
    GATEWAY_EVENTS + "ReceiveStripeEvent": lambda s: {"contentType": "application/json", "data": "e30="},
}

# The same methods naming account B's resources: a customer of A must get NOT_FOUND.
FOREIGN: dict[str, Case] = {
    SUB + "GetSubscription": lambda s: {"id": s.sub_b},
    SUB + "ListPendingInvoiceItems": lambda s: {"accountId": s.account_b},
    SUB + "GetEntitlements": lambda s: {"accountId": s.account_b},
    USAGE + "ListUsageRecords": lambda s: {"accountId": s.account_b},
    USAGE + "GetUsageSummary": lambda s: {"accountId": s.account_b},
    INVOICE + "GetInvoice": lambda s: {"id": s.invoice_b},
    INVOICE + "ListInvoices": lambda s: {"accountId": s.account_b},
    INVOICE + "RenderInvoice": lambda s: {"id": s.invoice_b},
    INVOICE + "GetCreditNote": lambda s: {"id": s.credit_note_b},
    INVOICE + "ListCreditNotes": lambda s: {"accountId": s.account_b},
    PAY + "GetPayment": lambda s: {"id": s.payment_b},
    PAY + "ListPayments": lambda s: {"accountId": s.account_b},
    EVENTS + "ListEvents": lambda s: {"accountId": s.account_b},
    EVENTS + "WatchEvents": lambda s: {"accountId": s.account_b},
}


def policy(method: str) -> MethodPolicy:
    found = POLICIES.get(method)
    assert found is not None, f"{method} has no access policy"
    return found


def request_of(method: str, fields: dict[str, Any]) -> Message:
    message = json_format.ParseDict(fields, _class(method)())
    return message


def _class(method: str) -> type[Message]:
    return GetMessageClass(METHODS[method].input_type)


async def grpc_code(app: App, token: str | None, method: str, fields: dict[str, Any]) -> grpc.StatusCode:
    output = METHODS[method].output_type
    reply_class = GetMessageClass(output)
    request = request_of(method, fields)
    async with channel_as(app, token) as channel:
        try:
            if METHODS[method].client_streaming:  # the stream: one request, every answer read
                stream = channel.stream_stream(
                    method,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=reply_class.FromString,
                )
                try:
                    async for _ in stream(iter([request])):
                        pass
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.INTERNAL:
                        raise
                    # A refusal before the server reads races the client's write, which grpc.aio
                    # reports as INTERNAL ("Internal error from Core"): ask again sending nothing.
                    async for _ in stream(iter([])):
                        pass
            elif METHODS[method].server_streaming:  # a watch: its first message says it was let in
                watch = channel.unary_stream(
                    method,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=reply_class.FromString,
                )(request)
                try:
                    await watch.read()
                finally:
                    watch.cancel()
            else:
                call = channel.unary_unary(
                    method,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=reply_class.FromString,
                )
                await call(request)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _value_at(message: dict[str, Any], path: str) -> str:
    value: Any = message
    for name in path.split("."):
        value = value[name]
    return str(value)


def http_request(route: Route, message: Message) -> tuple[str, dict[str, Any]]:
    """The path and aiohttp arguments a REST client sends for `message` on `route`."""
    proto_names = json_format.MessageToDict(message, preserving_proto_field_name=True)
    json_names = json_format.MessageToDict(message)
    path = re.sub(r"\{([^}=]+)(=[^}]*)?\}", lambda m: _value_at(proto_names, m.group(1)), route.path)
    top_path_fields = {f.split(".")[0] for f in route.path_fields}
    rest = {
        message.DESCRIPTOR.fields_by_name[k].json_name: v
        for k, v in proto_names.items()
        if k not in top_path_fields
    }
    if takes_raw_body(route):  # a google.api.HttpBody: its bytes are the body
        raw: bytes = cast(Any, message).data
        return path, {"data": raw, "headers": {"Content-Type": "application/json"}}
    if route.body == "*":
        return path, {"json": rest}
    if route.body:
        return path, {"json": json_names[message.DESCRIPTOR.fields_by_name[route.body].json_name]}
    return path, {"params": {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in rest.items()}}


async def http_status(
    http: aiohttp.ClientSession, route: Route, token: str | None, fields: dict[str, Any]
) -> int:
    path, kwargs = http_request(route, request_of(route.grpc_method, fields))
    headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    async with http.request(route.http_method, path, headers=headers, **kwargs) as response:
        if not METHODS[route.grpc_method].server_streaming:  # a watch does not end: its status says it all
            await response.read()
        return response.status


async def seed(app: App) -> Seed:
    async with channel_as(app, mint(app)) as channel:
        a, b = await new_account(channel, 1), await new_account(channel, 2)
        meter = await meter_pb2_grpc.MeterServiceStub(channel).CreateMeter(
            meter_pb2.CreateMeterRequest(
                meter=meter_pb2.Meter(
                    code="seats-used", display_name="Seats used", aggregation=meter_pb2.Meter.AGGREGATION_SUM
                )
            )
        )
        plan = await new_plan(channel, "pro")
        subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        sub_a, sub_b = [
            await subs.CreateSubscription(
                subscription_pb2.CreateSubscriptionRequest(
                    subscription=subscription_pb2.Subscription(account_id=account.id, plan_id=plan.id)
                )
            )
            for account in (a, b)
        ]
        clock = await test_clock_pb2_grpc.TestClockServiceStub(channel).CreateTestClock(
            test_clock_pb2.CreateTestClockRequest(
                test_clock=json_format.ParseDict(
                    {"frozenTime": "2027-01-15T00:00:00Z"}, test_clock_pb2.TestClock()
                )
            )
        )
        hook = await webhook_pb2_grpc.WebhookServiceStub(channel).CreateWebhookEndpoint(
            webhook_pb2.CreateWebhookEndpointRequest(
                webhook_endpoint=webhook_pb2.WebhookEndpoint(url="https://93.184.216.34/hook")
            )
        )
        delivery = await _delivery_of_a_disabled_endpoint(app, webhook_pb2_grpc.WebhookServiceStub(channel))
        invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
        inv_a, inv_b = [
            await invoices.CreateInvoice(
                json_format.ParseDict(
                    {"accountId": account.id, "lines": [_LINE]}, invoice_pb2.CreateInvoiceRequest()
                )
            )
            for account in (a, b)
        ]
        credited_a, credited_b = [
            await invoices.CreateInvoice(
                json_format.ParseDict(
                    {"accountId": account.id, "lines": [_LINE], "finalize": True},
                    invoice_pb2.CreateInvoiceRequest(),
                )
            )
            for account in (a, b)
        ]
        note_a, note_b = [
            await invoices.CreateCreditNote(
                json_format.ParseDict(
                    {"invoiceId": invoice.id, **_CREDIT},
                    invoice_pb2.CreateCreditNoteRequest(),
                )
            )
            for invoice in (credited_a, credited_b)
        ]
        pay_a, pay_b = [
            await payment_pb2_grpc.PaymentServiceStub(channel).CreatePayment(
                payment_pb2.CreatePaymentRequest(
                    account_id=account.id, amount=usd(100), payment_method="tok_success"
                )
            )
            for account in (a, b)
        ]
    return Seed(
        a.id,
        b.id,
        meter.id,
        plan.id,
        sub_a.id,
        sub_b.id,
        clock.id,
        hook.id,
        delivery,
        inv_a.id,
        inv_b.id,
        inv_a.lines[0].id,
        credited_a.id,
        note_a.id,
        note_b.id,
        pay_a.id,
        pay_b.id,
    )


async def _delivery_of_a_disabled_endpoint(app: App, hooks: webhook_pb2_grpc.WebhookServiceStub) -> str:
    """A failed delivery, written as the delivery job would have left it, to a disabled endpoint."""
    endpoint = await hooks.CreateWebhookEndpoint(
        webhook_pb2.CreateWebhookEndpointRequest(
            webhook_endpoint=webhook_pb2.WebhookEndpoint(
                url="https://93.184.216.34/off", event_types=["none"]
            )
        )
    )
    await hooks.DisableWebhookEndpoint(webhook_pb2.DisableWebhookEndpointRequest(id=endpoint.id))
    now = app.components.clock.now()
    delivery_id = ids.new_id(webhooks.DELIVERY_PREFIX)
    async with db.UnitOfWork(app.components.platform.writers) as uow:
        uow.session.add(
            WebhookDeliveryRow(
                id=delivery_id,
                endpoint_id=endpoint.id,
                event_position=0,
                event_id="evt_seed",
                event_type="invoice.created",
                resource_type="invoice",
                resource_id="in_seed",
                payload={},
                event_time=now,
                status=webhooks.FAILED,
                attempt_count=12,
                create_time=now,
                due_time=None,
            )
        )
        await uow.commit()
    return delivery_id


def test_every_billing_method_has_a_case() -> None:
    assert set(CASES) == set(METHODS)
    assert set(FOREIGN) == {m for m in METHODS if policy(m).customers_allowed} - {SUB + "ListSubscriptions"}
    assert all(policy(m) for m in METHODS)


# The reviewed answer to "what may a customer do in billing": read its own subscriptions, pending
# items, entitlements, usage, invoices, credit notes, payments and events, nothing else. The matrix above
# follows the descriptors; this pins them, so widening a policy in a proto is a deliberate change to this
# list too.
CUSTOMER_METHODS = {
    SUB + "GetSubscription",
    SUB + "ListSubscriptions",
    SUB + "ListPendingInvoiceItems",
    SUB + "GetEntitlements",
    USAGE + "ListUsageRecords",
    USAGE + "GetUsageSummary",
    INVOICE + "GetInvoice",
    INVOICE + "ListInvoices",
    INVOICE + "RenderInvoice",
    INVOICE + "GetCreditNote",
    INVOICE + "ListCreditNotes",
    PAY + "GetPayment",
    PAY + "ListPayments",
    EVENTS + "ListEvents",
    EVENTS + "WatchEvents",
}


# The billing methods anyone may call without a token, each authenticated another way: Stripe's
# webhooks by their signature over the body. Pinned like CUSTOMER_METHODS.
PUBLIC_METHODS = {GATEWAY_EVENTS + "ReceiveStripeEvent"}
# What a public method answers in this app, whoever calls: no webhook secret is configured here.
PUBLIC_ANSWERS = {GATEWAY_EVENTS + "ReceiveStripeEvent": (grpc.StatusCode.UNAVAILABLE, 503)}


def test_customers_may_call_only_the_reviewed_billing_methods() -> None:
    assert {m for m in METHODS if policy(m).customers_allowed} == CUSTOMER_METHODS
    assert {m for m in METHODS if policy(m).public} == PUBLIC_METHODS
    assert all(policy(m).scopes for m in METHODS if m not in PUBLIC_METHODS)
    writes = {m for m in METHODS if any(scope.endswith(":write") for scope in policy(m).scopes)}
    assert not writes & CUSTOMER_METHODS


def tokens(app: App, seeded: Seed, method: str) -> dict[str, str]:
    needed = set(policy(method).scopes)
    return {
        "customer": mint(app, Role.CUSTOMER, account_id=seeded.account_a),
        "unscoped": mint(app, Role.SERVICE, scopes=frozenset(ALL_SCOPES - needed)),
        "scoped": mint(app, Role.SERVICE, scopes=frozenset(needed)),
    }


def expected_for_customer(method: str) -> grpc.StatusCode:
    return grpc.StatusCode.OK if policy(method).customers_allowed else grpc.StatusCode.PERMISSION_DENIED


async def test_the_access_matrix_over_grpc_and_rest(app: App) -> None:
    seeded = await seed(app)
    routes = [r for r in routes_of(SERVICES)]
    assert {r.grpc_method for r in routes} == set(METHODS), "every billing RPC has a REST binding"
    exercised: set[str] = set()
    async with Gateway(app) as http:
        # Refusals first: they change nothing, so every customer success still sees the seed.
        for method, case in CASES.items():
            fields, keys = case(seeded), tokens(app, seeded, method)
            if method in PUBLIC_METHODS:
                await _anyone_reaches(app, http, method, fields, [None, *keys.values()], routes)
                exercised.add(method)
                continue
            want = expected_for_customer(method)
            assert await grpc_code(app, None, method, fields) == grpc.StatusCode.UNAUTHENTICATED, method
            assert await grpc_code(app, keys["customer"], method, fields) == want, method
            assert (
                await grpc_code(app, keys["unscoped"], method, fields) == grpc.StatusCode.PERMISSION_DENIED
            ), method
            if method in FOREIGN:
                foreign = FOREIGN[method](seeded)
                assert await grpc_code(app, keys["customer"], method, foreign) == grpc.StatusCode.NOT_FOUND, (
                    method
                )
            for route in (r for r in routes if r.grpc_method == method):
                where = (method, route.http_method, route.path)
                assert await http_status(http, route, None, fields) == 401, where
                assert await http_status(http, route, keys["customer"], fields) == HTTP_OF[want], where
                assert await http_status(http, route, keys["unscoped"], fields) == 403, where
                if method in FOREIGN:
                    assert await http_status(http, route, keys["customer"], FOREIGN[method](seeded)) == 404, (
                        where
                    )
            exercised.add(method)
        await _customer_lists_only_their_own(app, http, seeded)
        # Then the scoped calls, which may change the seed (archive, cancel, delete the clock).
        for method, case in CASES.items():
            if method in PUBLIC_METHODS:
                continue
            fields, keys = case(seeded), tokens(app, seeded, method)
            assert (
                await grpc_code(app, keys["scoped"], method, fields) != grpc.StatusCode.PERMISSION_DENIED
            ), method
            for route in (r for r in routes if r.grpc_method == method):
                status = await http_status(http, route, keys["scoped"], fields)
                assert status not in (401, 403), (method, route.http_method, route.path, status)
    assert exercised == set(METHODS)


async def _anyone_reaches(
    app: App,
    http: aiohttp.ClientSession,
    method: str,
    fields: dict[str, Any],
    tokens: list[str | None],
    routes: list[Route],
) -> None:
    """A public method answers for itself, with a token of any kind or none (and an invalid one)."""
    code, status = PUBLIC_ANSWERS[method]
    for token in [*tokens, "not-a-token"]:
        assert await grpc_code(app, token, method, fields) == code, (method, token)
        for route in (r for r in routes if r.grpc_method == method):
            assert await http_status(http, route, token, fields) == status, (method, route.path, token)


async def _customer_lists_only_their_own(app: App, http: aiohttp.ClientSession, seeded: Seed) -> None:
    """ListSubscriptions confines a customer: naming B's account lists nothing, as for no account."""
    customer = mint(app, Role.CUSTOMER, account_id=seeded.account_a)
    async with channel_as(app, customer) as channel:
        subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        own = await subs.ListSubscriptions(subscription_pb2.ListSubscriptionsRequest())
        assert [s.id for s in own.subscriptions] == [seeded.sub_a]
        for account_id in (seeded.account_b, "acct_does_not_exist"):
            listed = await subs.ListSubscriptions(
                subscription_pb2.ListSubscriptionsRequest(account_id=account_id)
            )
            assert list(listed.subscriptions) == []
    headers = {"Authorization": f"Bearer {customer}"}
    async with http.get(
        "/v1/subscriptions", params={"accountId": seeded.account_b}, headers=headers
    ) as response:
        assert response.status == 200
        assert (await response.json()).get("subscriptions", []) == []

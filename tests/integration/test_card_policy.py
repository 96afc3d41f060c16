"""A card number in any request's free text is refused before anything runs, over gRPC and REST,
naming its field, with nothing written and nothing logged; identifiers that pass Luhn are accepted.
(tests/integration/test_payments.py covers the payment fields; tests/unit/test_card_policy.py the
rule deciding which fields are free text.)"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import text

from app.server import App
from core.card_policy import CARD_NUMBER
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import invoice_pb2, invoice_pb2_grpc, usage_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tests.billing_support import new_account, usd
from tests.integration.test_credit_notes import credit
from tests.integration.test_gateway import Gateway, bearer, call, detail
from tests.integration.test_invoices import line, one_off
from tests.integration.test_usage_ingest import event, meter
from tests.support import details, failing, mint

CARD = "4242 4242 4242 4242"
LUHN_ID = "4111111111111111"  # 16 digits passing Luhn, as a numeric (snowflake-like) id may
WATCHED = (
    "accounts",
    "plans",
    "invoices",
    "invoice_lines",
    "credit_notes",
    "credit_note_lines",
    "idempotency_keys",
    "audit_events",
    "outbox_events",
)


@dataclass
class Refusal:
    """One RPC with a card number in one field: its gRPC call, its REST call and the field named."""

    grpc_call: Callable[[grpc.aio.Channel], Awaitable[Any]]
    rest: tuple[str, str, dict[str, Any]]  # method, path, JSON body
    field: str


def _body(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


async def _add_invoice_line(channel: grpc.aio.Channel) -> Refusal:
    account = await new_account(channel, 1)
    draft = await invoice_pb2_grpc.InvoiceServiceStub(channel).CreateInvoice(
        one_off(account.id, line("Plan", "5"))
    )
    request = invoice_pb2.AddInvoiceLineRequest(
        invoice_id=draft.id, line=line(f"setup, card {CARD}", "10.00")
    )
    return Refusal(
        lambda chan: invoice_pb2_grpc.InvoiceServiceStub(chan).AddInvoiceLine(request),
        ("POST", f"/v1/invoices/{draft.id}/lines", _body(request.line)),
        "line.description",
    )


async def _create_credit_note(channel: grpc.aio.Channel) -> Refusal:
    account = await new_account(channel, 2)
    invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
    invoice = await invoices.CreateInvoice(one_off(account.id, line("Plan", "100.00"), finalize=True))
    request = credit(invoice.id, 500, memo=f"refund to {CARD.replace(' ', '-')}")
    body = _body(request)
    del body["invoiceId"]
    return Refusal(
        lambda chan: invoice_pb2_grpc.InvoiceServiceStub(chan).CreateCreditNote(request),
        ("POST", f"/v1/invoices/{invoice.id}/creditNotes", body),
        "memo",
    )


async def _create_plan(_channel: grpc.aio.Channel) -> Refusal:
    plan = plan_pb2.Plan(code="pro", display_name="Pro", currency_code="USD", description=f"call {CARD}")
    plan.billing_interval.unit = plan_pb2.BillingInterval.UNIT_MONTH
    plan.billing_interval.count = 1
    plan.base_fee.CopyFrom(usd(3000))
    request = plan_pb2.CreatePlanRequest(plan=plan)
    return Refusal(
        lambda chan: plan_pb2_grpc.PlanServiceStub(chan).CreatePlan(request),
        ("POST", "/v1/plans", _body(plan)),
        "plan.description",
    )


async def _create_account(_channel: grpc.aio.Channel) -> Refusal:
    account = account_pb2.Account(display_name=CARD, email="card@example.test", currency_code="USD")
    request = account_pb2.CreateAccountRequest(account=account)
    return Refusal(
        lambda chan: account_pb2_grpc.AccountServiceStub(chan).CreateAccount(request),
        ("POST", "/v1/accounts", _body(account)),
        "account.display_name",
    )


async def _contents(app: App) -> dict[str, list[str]]:
    async with app.engine.connect() as connection:
        return {
            table: sorted(str(row) for row in await connection.execute(text(f"SELECT * FROM {table}")))  # noqa: S608
            for table in WATCHED
        }


@pytest.mark.parametrize("setup", [_add_invoice_line, _create_credit_note, _create_plan, _create_account])
async def test_a_card_number_in_free_text_is_refused_naming_the_field_over_grpc_and_rest(
    app: App,
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
    setup: Callable[[grpc.aio.Channel], Awaitable[Refusal]],
) -> None:
    refusal = await setup(channel)
    caplog.set_level(logging.DEBUG)
    before = await _contents(app)

    error = await failing(refusal.grpc_call(channel))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert found.violations == {refusal.field: CARD_NUMBER}
    assert found.reason == "INVALID_ARGUMENT"
    assert "4242" not in (error.details() or "")

    method, path, body = refusal.rest
    async with Gateway(app) as http:
        answer, _ = await call(http, method, path, 400, json=body, headers=bearer(mint(app)))
    violations = detail(answer, "BadRequest")["fieldViolations"]
    assert violations == [{"field": refusal.field, "description": CARD_NUMBER}]
    assert "4242" not in str(answer)

    assert await _contents(app) == before  # nothing written, not even an idempotency key or audit row
    refused = [r for r in caplog.records if getattr(r, "code", None) == "INVALID_ARGUMENT"]
    assert len(refused) >= 2  # the access log saw both calls (gRPC, and REST's call through the gateway)
    logged = caplog.text + "".join(str(vars(record)) for record in caplog.records)  # extras too
    assert not [piece for piece in ("4242 4242", "4242-4242", "42424242") if piece in logged]


async def test_identifiers_that_pass_luhn_are_accepted(app: App, channel: grpc.aio.Channel) -> None:
    """A 16-digit numeric usage event id and request id pass the Luhn check and are still ids."""
    await meter(channel, "api_calls")
    account = await new_account(channel, 3, email="luhn@example.test")
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    first = await usage.CreateUsageRecord(
        event(account.id, "2", event_id=LUHN_ID, request_id=LUHN_ID, properties={"user": LUHN_ID})
    )
    assert first.usage_record.event_id == LUHN_ID and not first.replay
    again = await usage.CreateUsageRecord(
        event(account.id, "2", event_id=LUHN_ID, request_id=LUHN_ID, properties={"user": LUHN_ID})
    )
    assert again.replay and again.usage_record.id == first.usage_record.id
    created = await account_pb2_grpc.AccountServiceStub(channel).CreateAccount(
        account_pb2.CreateAccountRequest(
            request_id=LUHN_ID,
            account=account_pb2.Account(
                display_name="Luhn Ltd", email="ltd@example.test", currency_code="USD"
            ),
        )
    )
    assert created.display_name == "Luhn Ltd"

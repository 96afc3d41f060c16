"""The card-number policy: which request fields are free text, and the walk that refuses a card in one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from app.modules import SERVICES
from core.card_policy import CARD_NUMBER, CARD_NUMBER_KEY, card_violations, refuses_card_numbers
from core.errors import FieldViolation, InvalidArgument
from interceptors.validation import check_request
from tally.account.v1 import account_pb2
from tally.billing.v1 import invoice_pb2, payment_pb2, usage_pb2, webhook_pb2
from tally.subscription.v1 import plan_pb2, subscription_pb2

CARD = "4242 4242 4242 4242"
LUHN_ID = "4111111111111111"  # 16 digits passing Luhn, as a numeric (snowflake-like) id may

# String fields no card number is looked for in, by name, each for a reason. A name means the same
# in every message: a field is either checked everywhere it appears or nowhere.
UNCHECKED = {
    # Identifiers: ours (`acct_...`), or the caller's (usage event ids, producer ids), often numeric.
    **dict.fromkeys(
        ("id", "account_id", "account_ids", "invoice_id", "line_id", "endpoint_id", "delivery_id"),
        "an identifier",
    ),
    **dict.fromkeys(("meter_id", "plan_id", "subscription_id", "resource_id", "client_id"), "an identifier"),
    "request_id": "an idempotency key, often a number",
    "event_id": "a usage event's id, often a number",
    "producer_id": "a usage producer's id",
    "actor": "a principal's id (an audit filter)",
    # Tokens and secrets of our own, never stored or logged in clear.
    **dict.fromkeys(("page_token", "cursor", "etag", "refresh_token"), "a token Tally issued"),
    **dict.fromkeys(("password", "client_secret", "secret"), "a secret, never logged"),
    # Contacts and addresses with rules of their own.
    **dict.fromkeys(("email", "phone", "url"), "a contact or address, held to its own format"),
    # Values from a vocabulary: codes, names of things, enums as text.
    **dict.fromkeys(
        ("code", "currency_code", "billing_time_zone", "locale", "service", "property", "gateway"),
        "a code",
    ),
    **dict.fromkeys(("event_types", "resource_type", "scopes", "content_type"), "a code"),
    **dict.fromkeys(("region_code", "language_code", "postal_code", "sorting_code"), "a postal code"),
    "value": "a google.type.Decimal",
    "filter": "a query, not stored",
    "properties": "usage properties and their filters: UNIQUE_COUNT meters count ids in them",
}


def _fields(descriptor: Descriptor, seen: set[str]) -> Iterator[FieldDescriptor]:
    """Every string field (and map of strings) a message of this type can hold, at any depth."""
    if descriptor.full_name in seen:
        return
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        held = field.message_type
        if held is not None and held.GetOptions().map_entry:
            value = held.fields_by_name["value"]
            if value.type == FieldDescriptor.TYPE_STRING:
                yield field
            held = value.message_type
        elif field.type == FieldDescriptor.TYPE_STRING:
            yield field
        if held is not None and not held.full_name.startswith("google.protobuf."):
            yield from _fields(held, seen)


def _request_fields() -> list[FieldDescriptor]:
    seen: set[str] = set()
    return [
        field
        for service in SERVICES
        for method in service.methods
        for field in _fields(method.input_type, seen)
    ]


def test_every_string_field_a_request_can_hold_is_decided() -> None:
    """A new string field fails here until someone decides: free text (the option) or UNCHECKED."""
    fields = _request_fields()
    assert len(fields) > 50  # the walk reached the requests' messages
    undecided = {f.full_name for f in fields if not refuses_card_numbers(f) and f.name not in UNCHECKED}
    assert undecided == set()
    both = {f.full_name for f in fields if refuses_card_numbers(f) and f.name in UNCHECKED}
    assert both == set()


def test_the_free_text_the_issue_names_is_checked() -> None:
    checked = {f.full_name for f in _request_fields() if refuses_card_numbers(f)}
    assert {
        "tally.billing.v1.NewInvoiceLine.description",
        "tally.billing.v1.CreateInvoiceRequest.description",
        "tally.billing.v1.CreateCreditNoteRequest.memo",
        "tally.billing.v1.NewCreditNoteLine.description",
        "tally.subscription.v1.Plan.display_name",
        "tally.subscription.v1.Plan.description",
        "tally.billing.v1.Meter.display_name",
        "tally.account.v1.Account.display_name",
        "tally.account.v1.Account.metadata",
        "tally.billing.v1.WebhookEndpoint.description",
        "tally.subscription.v1.Subscription.metadata",
        "tally.billing.v1.CreatePaymentRequest.payment_method",
        "tally.billing.v1.PayInvoiceRequest.payment_method",
        "tally.billing.v1.RefundPaymentRequest.reason",
        "google.type.PostalAddress.address_lines",
    } <= checked


def _address_request() -> account_pb2.CreateAccountRequest:
    request = account_pb2.CreateAccountRequest(account=account_pb2.Account(display_name="Acme"))
    request.account.billing_address.address_lines.extend(["1 Main St", f"card {CARD}"])
    return request


@pytest.mark.parametrize(
    ("request_message", "paths"),
    [
        (
            invoice_pb2.AddInvoiceLineRequest(
                invoice_id="inv_1", line=invoice_pb2.NewInvoiceLine(description=f"card {CARD} exp 12/27")
            ),
            ["line.description"],
        ),
        (
            invoice_pb2.CreateInvoiceRequest(
                account_id="acct_1",
                lines=[
                    invoice_pb2.NewInvoiceLine(description="fine"),
                    invoice_pb2.NewInvoiceLine(description=CARD),
                ],
                description=CARD.replace(" ", "-"),
            ),
            ["lines[1].description", "description"],
        ),
        (
            invoice_pb2.CreateCreditNoteRequest(
                invoice_id="inv_1", memo=CARD, lines=[invoice_pb2.NewCreditNoteLine(description=CARD)]
            ),
            ["lines[0].description", "memo"],
        ),
        (
            plan_pb2.CreatePlanRequest(plan=plan_pb2.Plan(code="pro", display_name="Pro", description=CARD)),
            ["plan.description"],
        ),
        (
            account_pb2.CreateAccountRequest(
                account=account_pb2.Account(display_name=CARD, metadata={"note": CARD, CARD: "x"})
            ),
            ["account.display_name", "account.metadata['note']", "account.metadata"],
        ),
        (_address_request(), ["account.billing_address.address_lines[1]"]),
        (
            webhook_pb2.CreateWebhookEndpointRequest(
                webhook_endpoint=webhook_pb2.WebhookEndpoint(url="https://example.com", description=CARD)
            ),
            ["webhook_endpoint.description"],
        ),
        (
            subscription_pb2.UpdateSubscriptionRequest(
                subscription=subscription_pb2.Subscription(id="sub_1", metadata={"po": LUHN_ID})
            ),
            ["subscription.metadata['po']"],
        ),
        (payment_pb2.RefundPaymentRequest(id="pay_1", reason=CARD), ["reason"]),
    ],
)
def test_a_card_number_in_free_text_is_refused_by_its_path(
    request_message: Message, paths: list[str]
) -> None:
    violations = card_violations(request_message)
    assert sorted(v.field for v in violations) == sorted(paths)
    assert all(v.description in (CARD_NUMBER, CARD_NUMBER_KEY) for v in violations)
    with pytest.raises(InvalidArgument) as caught:
        check_request(request_message)
    assert caught.value.reason == "INVALID_ARGUMENT"  # as the payment use cases answered
    assert "4242" not in str(caught.value) and "4111" not in str(caught.value)


@pytest.mark.parametrize(
    "request_message",
    [
        usage_pb2.CreateUsageRecordRequest(
            account_id="acct_1",
            request_id=LUHN_ID,
            usage_record=usage_pb2.UsageRecord(service="api", event_id=LUHN_ID, properties={"user": LUHN_ID}),
        ),
        invoice_pb2.AddInvoiceLineRequest(
            invoice_id="inv_1", request_id=LUHN_ID, line=invoice_pb2.NewInvoiceLine(description="Setup")
        ),
        invoice_pb2.ListInvoicesRequest(account_id=LUHN_ID, page_token=LUHN_ID),
        account_pb2.CreateAccountRequest(
            request_id=LUHN_ID,
            account=account_pb2.Account(display_name="Acme", email=f"{LUHN_ID}@example.com", phone=LUHN_ID),
        ),
        # Digits glued to a word are part of it: a gateway token is not a card.
        payment_pb2.CreatePaymentRequest(
            account_id="acct_1", payment_method=f"pm_{LUHN_ID}", request_id=LUHN_ID
        ),
    ],
)
def test_identifiers_that_pass_luhn_are_accepted(request_message: Message) -> None:
    assert card_violations(request_message) == []
    check_request(request_message)


def test_the_text_policy_answers_first_and_the_card_is_still_not_quoted() -> None:
    request = invoice_pb2.CreateInvoiceRequest(account_id="acct_1", description=f"bell\x07 {CARD}")
    with pytest.raises(InvalidArgument) as caught:
        check_request(request)
    assert caught.value.reason == "INVALID_TEXT"
    assert [v.field for v in caught.value.violations] == ["description"]
    assert "4242" not in str(caught.value)


def test_at_most_ten_violations_are_named() -> None:
    lines = [invoice_pb2.NewInvoiceLine(description=CARD) for _ in range(25)]
    violations = card_violations(invoice_pb2.CreateInvoiceRequest(account_id="acct_1", lines=lines))
    assert violations == [FieldViolation(f"lines[{index}].description", CARD_NUMBER) for index in range(10)]

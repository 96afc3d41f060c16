"""The catalog's rules in the OpenAPI document agree with the server's (gateway/constraints/)."""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from app.modules import SERVICES
from billing_svc.catalog import rules
from billing_svc.catalog.domain import Aggregation, MeterFields
from core.errors import InvalidArgument
from core.money import parse_unit_price
from gateway.constraints import digits_up_to
from gateway.openapi import build_openapi

JSON = dict[str, Any]


@functools.cache
def _document() -> JSON:
    """Built once: a property test draws hundreds of examples against it."""
    return build_openapi(SERVICES)


@pytest.fixture(scope="module")
def doc() -> JSON:
    return _document()


def validator(doc: JSON, component: str) -> Draft202012Validator:
    """A validator for one component, resolving the document's $refs."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": doc["components"]}
    return Draft202012Validator(schema)


def unit_price_pattern(doc: JSON) -> str:
    rule = doc["components"]["schemas"]["tally.subscription.v1.PerUnitPrice"]["properties"]["unitPrice"]
    return str(rule["properties"]["value"]["pattern"])


@settings(max_examples=400, deadline=None)
@given(
    st.from_regex(r"\A[+-]?[0-9]{0,20}(\.[0-9]{0,14})?\Z") | st.text(alphabet="0123456789.+-e ", max_size=24)
)
def test_the_unit_price_pattern_is_parse_unit_price(text: str) -> None:
    pattern = re.compile(unit_price_pattern(_document()))
    try:
        parse_unit_price(text, field="x")
        accepted = True
    except InvalidArgument:
        accepted = False
    assert bool(pattern.fullmatch(text)) == accepted, text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**64) | st.integers(min_value=0, max_value=10**20))
def test_unsigned_int64_digits(value: int) -> None:
    pattern = re.compile(digits_up_to(2**63 - 1))
    assert bool(pattern.fullmatch(str(value))) == (value <= 2**63 - 1)
    assert bool(pattern.fullmatch(f"00{value}")) == (value <= 2**63 - 1)


def test_meter_property_follows_the_aggregation(doc: JSON) -> None:
    check = validator(doc, "tally.billing.v1.Meter.Create")
    base = {"code": "users", "displayName": "Users"}
    cases = [
        ({"aggregation": "AGGREGATION_UNIQUE_COUNT", "property": "user_id"}, True),
        ({"aggregation": "AGGREGATION_UNIQUE_COUNT"}, False),
        ({"aggregation": "AGGREGATION_SUM", "property": "user_id"}, False),
        ({"aggregation": "AGGREGATION_SUM", "property": ""}, True),
        ({"aggregation": "AGGREGATION_UNSPECIFIED"}, False),
    ]
    for extra, valid in cases:
        body = {**base, **extra}
        assert check.is_valid(body) == valid, body
        server = True
        try:
            rules.check_new_meter(
                MeterFields(
                    code="users",
                    display_name="Users",
                    aggregation=None
                    if extra["aggregation"] == "AGGREGATION_UNSPECIFIED"
                    else Aggregation[extra["aggregation"].removeprefix("AGGREGATION_")],
                    property=str(extra.get("property", "")),
                )
            )
        except InvalidArgument:
            server = False
        assert server == valid, body


def test_immutable_fields_are_left_out_of_a_patch(doc: JSON) -> None:
    meter = validator(doc, "tally.billing.v1.Meter.Update")
    assert meter.is_valid({"displayName": "Renamed"})
    assert not meter.is_valid({"displayName": "Renamed", "code": "other"})
    # Invisible characters above U+FFFF are refused as themselves, not as a BMP one and a letter.
    assert not meter.is_valid({"displayName": "Re\U000110bdnamed"})
    plan = validator(doc, "tally.subscription.v1.Plan.Update")
    assert plan.is_valid({"trialDays": 14})
    assert not plan.is_valid({"currencyCode": "EUR"})


def test_plan_rules_in_the_document(doc: JSON) -> None:
    check = validator(doc, "tally.subscription.v1.Plan.Create")
    plan = {
        "code": "pro",
        "displayName": "Pro",
        "currencyCode": "USD",
        "billingInterval": {"unit": "UNIT_MONTH", "count": 36},
        "seatPrice": {"price": {"perUnit": {"unitPrice": {"value": "0.000000000125"}}}},
        "features": [{"code": "sso", "enabled": True}, {"code": "seats", "limit": "5"}],
    }
    assert check.is_valid(plan)
    broken: list[JSON] = [
        {"billingInterval": {"unit": "UNIT_MONTH", "count": 37}},  # three years at most
        {"billingInterval": {"unit": "UNIT_UNSPECIFIED"}},
        {"trialDays": 731},
        {"baseFee": {"currencyCode": "USD", "amountMinor": "-1"}},
        {"seatPrice": {"price": {"percentage": {"rate": {"value": "1"}}}}},  # metered charges only
        {"seatPrice": {"price": {}}},  # a price is one model
        {"seatPrice": {"price": {"perUnit": {"unitPrice": {"value": "1e3"}}}}},
        {"features": [{"code": "sso"}]},  # a flag or a limit
        {"features": [{"code": "sso", "enabled": True, "limit": "1"}]},
        {"meteredCharges": [{"meterId": "acct_x", "price": {"perUnit": {"unitPrice": {"value": "1"}}}}]},
    ]
    for change in broken:
        assert not check.is_valid({**plan, **change}), change
    package = {"package": {"size": {"value": "0.000"}, "price": {"value": "1"}}}
    assert not check.is_valid({**plan, "seatPrice": {"price": package}})
    rate = {"percentage": {"rate": {"value": "100.5"}}}
    charge = {"meterId": "mtr_" + "0" * 26, "price": rate}
    assert not check.is_valid({**plan, "meteredCharges": [charge]})
    charge["price"] = {"percentage": {"rate": {"value": "100.000"}}}
    assert check.is_valid({**plan, "meteredCharges": [charge]})

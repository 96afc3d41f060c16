"""Subscriptions' and test clocks' rules in the OpenAPI document agree with the server's
(gateway/constraints/billing.py, gateway/constraints/accounts.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import json_format, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from account_svc import domain as accounts
from app.modules import SERVICES
from billing_svc.clocks import domain as clocks
from core.errors import InvalidArgument, Violations
from gateway.constraints.billing import FROZEN_TIME_PATTERN
from gateway.openapi import build_openapi

JSON = dict[str, Any]
_SCHEMAS = "components"


@pytest.fixture(scope="module")
def doc() -> JSON:
    return build_openapi(SERVICES)


def server_accepts(text: str) -> bool:
    """The frozen time as the gateway reads it (json_format) and the clock rules check it."""
    stamp = timestamp_pb2.Timestamp()
    try:
        json_format.Parse(f'"{text}"', stamp)
        clocks.check_target(stamp.ToDatetime(tzinfo=UTC))
    except (json_format.ParseError, InvalidArgument, ValueError, OverflowError):
        return False
    return True


def written(instant: datetime, offset_minutes: int, fraction: str) -> str:
    sign = "+" if offset_minutes >= 0 else "-"
    local = instant + timedelta(minutes=offset_minutes)
    hours, minutes = divmod(abs(offset_minutes), 60)
    zone = "Z" if offset_minutes == 0 and not fraction.startswith("0") else f"{sign}{hours:02}:{minutes:02}"
    return local.strftime("%Y-%m-%dT%H:%M:%S") + fraction.lstrip("0") + zone


@settings(max_examples=600, deadline=None)
@given(
    st.datetimes(min_value=datetime(1969, 12, 25), max_value=datetime(1970, 1, 3))
    | st.datetimes(min_value=datetime(8999, 12, 29), max_value=datetime(9000, 1, 2))
    | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    st.sampled_from(["", "0.5", ".123456789", "0"]),
)
def test_a_frozen_time_the_document_allows_is_one_the_server_accepts(
    instant: datetime, offset: int, fraction: str
) -> None:
    text = written(instant.replace(tzinfo=UTC), offset, fraction)
    if re.fullmatch(FROZEN_TIME_PATTERN, text):
        assert server_accepts(text), text


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("1970-01-01T00:00:00Z", True),
        ("8999-12-31T23:59:59.999999999Z", True),
        ("1970-01-01T05:00:00-05:00", True),  # 10:00 UTC
        ("1970-01-02T00:30:00+01:00", True),  # the offset cannot cross a year here
        ("1969-12-31T23:59:59Z", False),
        ("9000-01-01T00:00:00Z", False),
        ("1970-01-01T00:30:00+01:00", False),  # 1969 in UTC: refused, and so not described
        ("8999-12-31T23:30:00-01:00", False),  # 9000 in UTC
        ("0997-10-22T03:29:32+14:51", False),  # found by schemathesis
        ("2020-01-01t00:00:00z", False),  # json_format takes upper-case T and Z only
        ("2020-01-01T00:00:60Z", False),  # no leap second
        ("2020-01-01T00:00:00.1234567891Z", False),  # at most nine fractional digits
    ],
)
def test_frozen_time_boundaries(text: str, allowed: bool) -> None:
    assert bool(re.fullmatch(FROZEN_TIME_PATTERN, text)) is allowed
    if allowed:
        assert server_accepts(text)
    elif not text.startswith(("1970-01-01T00:30", "8999-12-31T23:30")):
        assert not server_accepts(text)


def test_the_time_zones_listed_are_exactly_those_accepted(doc: JSON) -> None:
    schema = doc[_SCHEMAS]["schemas"]["tally.account.v1.Account"]["properties"]["billingTimeZone"]
    listed = next(part["enum"] for part in schema.get("anyOf", [schema]) if "enum" in part)
    assert listed[0] == "" and "Europe/Berlin" in listed and "þ" not in listed
    for name in listed:
        violations = Violations()
        accounts.check_time_zone(violations, "zone", name)
        assert not violations.items, name
    for refused in ("utc", "Factory", "localtime", "þ", "Europe/berlin"):
        violations = Violations()
        accounts.check_time_zone(violations, "zone", refused)
        assert violations.items and refused not in listed, refused


def test_a_patch_may_leave_the_fields_other_methods_change_empty(doc: JSON) -> None:
    update = doc[_SCHEMAS]["schemas"]["tally.subscription.v1.Subscription.Update"]
    assert "ChangeSubscription" in update["description"] or ":change" in update["description"]
    assert update["properties"]["accountId"]["enum"] == ["", None]
    assert update["properties"]["planId"]["enum"] == ["", None]

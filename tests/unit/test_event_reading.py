"""Reading the outbox, pure: the account of an event, filters, cursors, exact payload numbers.
(What a filter admits is SQL now: tests/integration/test_events.py checks it on both backends.)"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format

from billing_svc.events.domain import EventFilter, cursor_at, event_filter, position_of
from billing_svc.events.servicer import event_to_proto
from core.errors import InvalidArgument, NotFound
from core.outbox import OutboxEvent, account_of, pending_event

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def event(event_type: str, resource: tuple[str, str], payload: dict[str, Any]) -> OutboxEvent:
    account = account_of(*resource, payload)
    return OutboxEvent(7, "oev_1", event_type, *resource, account, payload, T0, None)


def test_an_events_account_is_the_payloads_or_the_account_itself() -> None:
    assert account_of("invoice", "inv_1", {"account_id": "acct_a"}) == "acct_a"
    assert account_of("account", "acct_b", {}) == "acct_b"
    assert account_of("plan", "plan_1", {}) == ""
    assert account_of("test_clock", "clk", {"account_id": ["x"]}) == ""
    assert account_of("invoice", "inv_1", {"account_id": "a" * 65}) == ""  # longer than any id


def test_an_event_is_stamped_with_its_account_when_emitted() -> None:
    paid = pending_event("invoice.paid", ("invoice", "inv_1"), {"account_id": "acct_a"}, T0)
    assert paid.account_id == "acct_a"
    assert pending_event("account.updated", ("account", "acct_b"), {}, T0).account_id == "acct_b"
    assert pending_event("plan.created", ("plan", "plan_1"), {"x": 1}, T0).account_id == ""


def test_only_an_empty_filter_takes_all() -> None:
    assert EventFilter().takes_all
    assert not EventFilter(("invoice.",)).takes_all and not EventFilter(account_id="acct_a").takes_all


def test_a_customer_is_confined_to_its_account() -> None:
    assert event_filter((), "", "", "", customer_account="acct_a").account_id == "acct_a"
    assert event_filter((), "", "", "acct_a", customer_account="acct_a").account_id == "acct_a"
    with pytest.raises(NotFound):
        event_filter((), "", "", "acct_b", customer_account="acct_a")
    assert event_filter((), "", "", "acct_b", customer_account=None).account_id == "acct_b"


@pytest.mark.parametrize("cursor", ["", "7", "c", "c-1", "c01", "c1.5", "C1", "c1 ", "c" + "9" * 19])
def test_only_cursors_of_this_api_are_read(cursor: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        position_of(cursor)
    assert caught.value.violations[0].field == "cursor"


def test_a_cursor_names_its_position() -> None:
    for position in (0, 1, 10**18 - 1):
        assert position_of(cursor_at(position)) == position


def test_payload_integers_a_double_cannot_hold_travel_as_strings() -> None:
    payload = {"total_minor": 2**53, "big": 2**53 + 1, "nested": [{"n": -(2**60)}], "flag": True}
    message = event_to_proto(event("invoice.paid", ("invoice", "inv_1"), payload))
    read = json_format.MessageToDict(message.payload)
    assert read == {
        "total_minor": 2**53,
        "big": str(2**53 + 1),
        "nested": [{"n": str(-(2**60))}],
        "flag": True,
    }

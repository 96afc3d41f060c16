"""The checks of a usage event and its fingerprint: pure functions, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing_svc.catalog.domain import Aggregation, Meter
from billing_svc.usage import rules
from billing_svc.usage.domain import UsageInput
from billing_svc.usage.rules import Window
from core.errors import InvalidArgument

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
WINDOW = Window(late=timedelta(hours=72), future_skew=timedelta(seconds=300))


def meter(code: str, aggregation: Aggregation = Aggregation.SUM, archived: bool = False) -> Meter:
    return Meter(
        id=f"mtr_{code}", code=code, display_name=code, unit_label="u", aggregation=aggregation,
        property="", create_time=NOW, update_time=NOW, archive_time=NOW if archived else None, revision=1,
    )  # fmt: skip


METERS = {m.code: m for m in (meter("calls"), meter("seats", Aggregation.MAX), meter("old", archived=True))}


def check(**fields: object) -> rules.CheckedEvent:
    values: dict[str, object] = {"account_id": "acct_1", "service": "calls", "units": "1", "event_id": "e1"}
    values.update(fields)
    return rules.check_event(UsageInput(**values), METERS, ["calls", "seats"], NOW, WINDOW)  # type: ignore[arg-type]


def violations(**fields: object) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        check(**fields)
    return {v.field: v.description for v in caught.value.violations}


def test_the_same_event_written_differently_has_one_fingerprint() -> None:
    a = check(units="1.50", properties={"a": "1", "b": "2"}, price_per_unit="0.10")
    b = check(units="1.5", properties={"b": "2", "a": "1"}, price_per_unit=".1")
    assert a.fingerprint == b.fingerprint and a.units == Decimal("1.5")
    assert check(units="2").fingerprint != a.fingerprint


def test_the_fingerprint_is_pinned_because_stored_fingerprints_must_keep_matching_retries() -> None:
    # Stored with every event id: a change here would answer a retry of an event recorded before
    # it ALREADY_EXISTS. Computed once from the definition in rules.fingerprint; change only with
    # a migration of usage_event_ids.fingerprint.
    event = check(units="1.50", properties={"a": "1", "b": "2"}, price_per_unit="0.10")
    assert event.fingerprint == "583bc788cfc768db02752f396aea0efff801a106fec2abd3aca88a0f23c21a3d"
    assert check().fingerprint == "36e317b4ac6e4408e3b9ff31eec374223fdeeeabbdbe657446f7cfe74e2081e7"


def test_parts_are_length_prefixed_so_shifting_text_between_fields_changes_the_fingerprint() -> None:
    assert check(properties={"ab": "c"}).fingerprint != check(properties={"a": "bc"}).fingerprint
    assert (
        check(account_id="acct_1", event_id="e12").fingerprint
        != check(account_id="acct_1e", event_id="12").fingerprint
    )
    assert check(price_per_unit="").fingerprint != check(price_per_unit="0").fingerprint


def test_an_omitted_event_time_is_the_receipt_but_fingerprints_as_none() -> None:
    omitted = check()
    assert omitted.event_time == NOW
    assert check(event_time=NOW).fingerprint != omitted.fingerprint
    later = rules.check_event(
        UsageInput("acct_1", "calls", "1", event_id="e1"), METERS, [], NOW + timedelta(hours=1), WINDOW
    )
    assert later.fingerprint == omitted.fingerprint


@pytest.mark.parametrize(
    "units", ["", "abc", "1e", "NaN", "Infinity", " 1", "1_000", "0.0000000000001", "1e18"]
)
def test_units_that_are_refused(units: str) -> None:
    assert "usage_record.units_consumed" in violations(units=units)


@pytest.mark.parametrize(("units", "value"), [("3", "3"), ("0.25", "0.25"), ("2.5e-1", "0.25"), ("-0", "0")])
def test_units_that_are_accepted(units: str, value: str) -> None:
    assert check(units=units).units == Decimal(value)


def test_negative_units_only_for_sum_meters() -> None:
    assert check(units="-2").units == Decimal(-2)
    assert "MAX" in violations(service="seats", units="-2")["usage_record.units_consumed"]


def test_unknown_and_archived_services_list_the_codes_there_are() -> None:
    for code in ("nope", "old"):
        assert "calls, seats" in violations(service=code)["usage_record.service"]
    many = [f"m{n:03d}" for n in range(51)]
    text = rules.unknown_service("x", many)
    assert "m049" in text and "m050" not in text and text.endswith("and more")


def test_the_window_includes_its_bounds() -> None:
    assert check(event_time=NOW - WINDOW.late).event_time == NOW - WINDOW.late
    assert check(event_time=NOW + WINDOW.future_skew).event_time == NOW + WINDOW.future_skew
    assert (
        "72 hours"
        in violations(event_time=NOW - WINDOW.late - timedelta(microseconds=1))["usage_record.event_time"]
    )
    assert (
        "300 seconds"
        in violations(event_time=NOW + WINDOW.future_skew + timedelta(microseconds=1))[
            "usage_record.event_time"
        ]
    )


def test_ids_properties_and_price() -> None:
    assert set(violations(event_id="a", request_id="b")) == {"request_id"}
    assert check(event_id="", request_id="r").event_id == "r"
    assigned = check(event_id="")
    assert assigned.event_id_assigned and assigned.event_id.startswith("evt_")
    assert "usage_record.price_per_unit" in violations(price_per_unit="-0.01")
    assert "usage_record.properties" in violations(properties={"": "v"})
    assert "usage_record.properties[k]" in violations(properties={"k": "v" * 257})
    everything = violations(account_id="", service="", units="x", event_id="\x00")
    assert set(everything) == {
        "account_id",
        "usage_record.service",
        "usage_record.units_consumed",
        "usage_record.event_id",
    }


def test_batch_size() -> None:
    rules.batch_size(1, 1000)
    rules.batch_size(1000, 1000)
    for count in (0, 1001):
        with pytest.raises(InvalidArgument):
            rules.batch_size(count, 1000)

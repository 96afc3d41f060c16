"""Test clock rules: what a new clock may be, how far and which way one advance may move it, and the
round trip of what request ids store. Pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing_svc.clocks import domain
from billing_svc.clocks.domain import (
    Advanced,
    BillingWork,
    Deleted,
    check_advance,
    check_new_clock,
    check_target,
)
from core.errors import FailedPrecondition, InvalidArgument

T0 = datetime(2027, 1, 31, 12, tzinfo=UTC)
CLOCK = domain.TestClock(
    id="clk_1",
    display_name="Rehearsal",
    frozen_time=T0,
    account_ids=("acct_b", "acct_a"),
    create_time=datetime(2026, 12, 1, tzinfo=UTC),
    update_time=datetime(2026, 12, 2, tzinfo=UTC),
    revision=3,
)


def violations(display_name: str, frozen_time: datetime | None) -> dict[str, str]:
    try:
        check_new_clock(display_name, frozen_time)
    except InvalidArgument as exc:
        return {v.field: v.description for v in exc.violations}
    return {}


def test_a_valid_clock_passes() -> None:
    assert violations("", T0) == {}
    assert violations("n" * domain.MAX_DISPLAY_NAME, domain.MIN_TIME) == {}


@pytest.mark.parametrize(
    ("display_name", "frozen_time", "field", "fragment"),
    [
        ("n" * 201, T0, "test_clock.display_name", "at most 200"),
        ("a\u200bb", T0, "test_clock.display_name", "invisible"),
        ("a\x07b", T0, "test_clock.display_name", "control characters"),
        ("ok", None, "test_clock.frozen_time", "required"),
        ("ok", domain.MIN_TIME - timedelta(microseconds=1), "test_clock.frozen_time", "from 1970"),
        ("ok", domain.MAX_TIME, "test_clock.frozen_time", "9000"),
    ],
)
def test_each_bad_field_is_named(
    display_name: str, frozen_time: datetime | None, field: str, fragment: str
) -> None:
    found = violations(display_name, frozen_time)
    assert field in found, found
    assert fragment in found[field]


def test_both_bad_fields_are_named_at_once() -> None:
    assert set(violations("n" * 201, None)) == {"test_clock.display_name", "test_clock.frozen_time"}


def test_an_advance_target_is_checked_before_any_clock_is_read() -> None:
    assert check_target(T0) == T0
    with pytest.raises(InvalidArgument) as caught:
        check_target(None)
    assert caught.value.violations[0].field == "frozen_time"


def test_equal_and_forward_targets_pass_up_to_731_days() -> None:
    check_advance(CLOCK, T0)
    check_advance(CLOCK, T0 + timedelta(days=731))


def test_going_back_is_refused_naming_both_times() -> None:
    target = T0 - timedelta(microseconds=1)
    with pytest.raises(FailedPrecondition) as caught:
        check_advance(CLOCK, target)
    assert caught.value.reason == "CLOCK_BACKWARDS"
    assert caught.value.metadata == {
        "id": "clk_1",
        "frozen_time": T0.isoformat(),
        "target": target.isoformat(),
    }


def test_more_than_731_days_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_advance(CLOCK, T0 + timedelta(days=731, microseconds=1))
    (violation,) = caught.value.violations
    assert violation.field == "frozen_time"
    assert T0.isoformat() in violation.description  # the clock's time, to count from


def test_stored_responses_round_trip() -> None:
    work = BillingWork("renewal", T0, "acct_a", "sub_1", ("pii_1", "pii_2"))
    assert domain.TestClock.from_dict(CLOCK.to_dict()) == CLOCK
    assert Advanced.from_dict(Advanced(CLOCK, (work,)).to_dict()) == Advanced(CLOCK, (work,))
    assert Deleted.from_dict(Deleted("clk_1", ("acct_a",)).to_dict()) == Deleted("clk_1", ("acct_a",))


def test_the_work_limit_error_says_where_the_clock_stopped() -> None:
    error = domain.work_limit_reached(CLOCK, T0 + timedelta(days=9), 10_000)
    assert error.reason == "ADVANCE_WORK_LIMIT"
    assert error.metadata["frozen_time"] == T0.isoformat()
    assert error.metadata["target"] == (T0 + timedelta(days=9)).isoformat()

"""Proration to the second: remaining fractions, credit and charge lines, worked examples."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from billing_svc.subscriptions.periods import Cycle, Interval, IntervalUnit, Period
from billing_svc.subscriptions.proration import (
    Fee,
    ProrationLine,
    change_lines,
    prorate,
    remaining_fraction,
)
from core.money import Money

UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")
MONTHLY = Interval(IntervalUnit.MONTH)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def month(year: int, month_: int, zone: ZoneInfo = UTC_ZONE) -> Period:
    return Cycle(date(year, month_, 1), zone, MONTHLY).period(0)


def fee(code: str, amount: str, quantity: str = "1", description: str = "") -> Fee:
    return Fee(code, description or code, Decimal(amount), Decimal(quantity))


def amounts(lines: list[ProrationLine]) -> list[tuple[str, str, int]]:
    return [(line.kind, line.fee_code, line.amount_minor) for line in lines]


# ---------------------------------------------------------------- remaining_fraction

APRIL = month(2027, 4)  # 30 days: 2,592,000 seconds


def test_remaining_fraction_is_seconds_left_over_seconds_in_the_period() -> None:
    assert remaining_fraction(APRIL, utc(2027, 4, 1)) == 1
    assert remaining_fraction(APRIL, utc(2027, 4, 16)) == Fraction(1, 2)
    assert remaining_fraction(APRIL, utc(2027, 4, 30, 23, 59, 59)) == Fraction(1, 2_592_000)


def test_remaining_fraction_truncates_to_the_second() -> None:
    at = utc(2027, 4, 1, 0, 0, 10) + timedelta(microseconds=999_999)
    assert remaining_fraction(APRIL, at) == Fraction(2_592_000 - 10, 2_592_000)
    last_instant = utc(2027, 5, 1) - timedelta(microseconds=1)
    assert remaining_fraction(APRIL, last_instant) == Fraction(1, 2_592_000)


def test_remaining_fraction_refuses_instants_outside_the_period() -> None:
    for outside in (utc(2027, 5, 1), utc(2027, 4, 1) - timedelta(microseconds=1), utc(2030, 1, 1)):
        with pytest.raises(ValueError, match="not within the period"):
            remaining_fraction(APRIL, outside)
    with pytest.raises(ValueError, match="timezone-aware"):
        remaining_fraction(APRIL, datetime(2027, 4, 16))
    empty = Period(utc(2027, 4, 1), utc(2027, 4, 1), 0)
    with pytest.raises(ValueError, match="not within the period"):
        remaining_fraction(empty, utc(2027, 4, 1))


def test_remaining_fraction_uses_real_seconds_whatever_zone_the_instant_is_in() -> None:
    # 2027-04-16 00:00 UTC given as New York wall time (20:00 EDT on the 15th).
    at = utc(2027, 4, 16).astimezone(NEW_YORK)
    assert remaining_fraction(APRIL, at) == Fraction(1, 2)


# ---------------------------------------------------------------- worked examples


def test_stripe_upgrade_halfway_through_the_month() -> None:
    """10 USD monthly upgraded to 20 USD halfway: -5 USD unused, +10 USD remaining, +5 USD net.

    https://docs.stripe.com/billing/subscriptions/prorations ("How prorations work").
    Stripe also prorates to the second
    (https://docs.stripe.com/billing/scripts/prorations), so "halfway" is half the
    seconds; here April 2027 in UTC, changed at 00:00 on the 16th (15 of 30 days
    left). Stripe's periods start at the subscription's own timestamp, Tally's at
    local midnight, which is why the period is a whole calendar month here.
    """
    lines = change_lines([fee("base", "10.00")], [fee("base", "20.00")], APRIL, utc(2027, 4, 16), "USD")
    assert amounts(lines) == [("credit", "base", -500), ("charge", "base", 1000)]
    assert sum(line.amount_minor for line in lines) == 500


def test_chargebee_downgrade_after_twenty_days() -> None:
    """60 USD monthly downgraded to 30 USD on 21 April 2012: 20 USD credit, 10 USD charge.

    https://www.chargebee.com/docs/proration-old.html (Example 1: billing period 1 Apr to
    1 May 2012, 10 days left). Chargebee counts days; at 00:00 UTC a day is exactly
    86,400 seconds, so Tally's seconds agree to the cent.
    """
    april_2012 = month(2012, 4)
    lines = change_lines([fee("base", "60")], [fee("base", "30")], april_2012, utc(2012, 4, 21), "USD")
    assert amounts(lines) == [("credit", "base", -2000), ("charge", "base", 1000)]
    # Where the rules part: at noon, 9.5 days are left, not 10 (19/60 of the period).
    noon = change_lines([fee("base", "60")], [fee("base", "30")], april_2012, utc(2012, 4, 21, 12), "USD")
    assert amounts(noon) == [("credit", "base", -1900), ("charge", "base", 950)]


def test_lago_mid_january_upgrade_uses_the_same_31_day_split() -> None:
    """Plan A at 100 EUR a month, changed on January 15: 14/31 of it used, 45.16 EUR.

    https://getlago.com/docs/guide/subscriptions/upgrades-downgrades (the arrears example
    bills the 14 days used). Tally credits the unused 17 days of an in-advance fee
    instead; used plus unused is the whole 100 EUR to the cent.
    """
    january = month(2027, 1)
    [credit] = change_lines([fee("plan_a", "100")], [], january, utc(2027, 1, 15), "EUR")
    assert credit.fraction == Fraction(17, 31)
    assert credit.amount_minor == -5484  # 100 x 17/31 = 54.8387...
    assert 10000 + credit.amount_minor == 4516  # Lago's 45.16 EUR for 14/31


def test_a_daylight_saving_month_is_prorated_by_its_real_seconds() -> None:
    """Where per-second and per-day rules differ: March in New York has 743 hours.

    31 USD a month, changed at 00:00 EDT on March 17 with 15 days (360 hours) left:
    31 x 360/743 = 15.0201... USD, so 1502 cents, where a day rule (15/31) says 1500.
    """
    march = month(2027, 3, NEW_YORK)
    assert march.seconds == 743 * 3600
    line = prorate(fee("base", "31"), march, utc(2027, 3, 17, 4), kind="charge", currency_code="USD")
    assert line.fraction == Fraction(360, 743)
    assert line.amount_minor == 1502


# ---------------------------------------------------------------- prorate and change_lines


def test_prorate_builds_one_line_for_the_slice() -> None:
    at = utc(2027, 4, 21, 8, 30, 15) + timedelta(microseconds=500)
    seats = fee("seats:pro", "84", "7", "Pro seats")
    line = prorate(seats, APRIL, at, kind="charge", currency_code="USD")
    assert line.start == utc(2027, 4, 21, 8, 30, 15)
    assert line.end == utc(2027, 5, 1)
    assert (line.fee_code, line.description, line.quantity) == ("seats:pro", "Pro seats", Decimal(7))
    assert line.fraction == Fraction(9 * 86400 + 15 * 3600 + 29 * 60 + 45, 2_592_000)
    # 84 x 833385/2592000 = 27.0078... USD
    assert line.amount_minor == 2701
    assert line.money == Money("USD", 2701)
    credit = prorate(seats, APRIL, at, kind="credit", currency_code="USD")
    assert credit.amount_minor == -2701
    assert credit.money == Money("USD", -2701)


def test_prorate_rounds_by_the_currency_exponent() -> None:
    third = utc(2027, 4, 21)  # 10 of 30 days left
    assert prorate(fee("b", "1000"), APRIL, third, kind="charge", currency_code="JPY").amount_minor == 333
    assert prorate(fee("b", "1000"), APRIL, third, kind="credit", currency_code="JPY").amount_minor == -333
    assert prorate(fee("b", "1"), APRIL, third, kind="charge", currency_code="KWD").amount_minor == 333
    # A tie: 0.25 USD x 1/2 is 0.125 USD, half a cent, which goes away from zero.
    half = utc(2027, 4, 16)
    assert prorate(fee("b", "0.25"), APRIL, half, kind="charge", currency_code="USD").amount_minor == 13
    assert prorate(fee("b", "0.25"), APRIL, half, kind="credit", currency_code="USD").amount_minor == -13


def test_prorate_refuses_bad_arguments() -> None:
    at = utc(2027, 4, 16)
    with pytest.raises(ValueError, match="kind"):
        prorate(fee("b", "1"), APRIL, at, kind="refund", currency_code="USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ISO 4217"):
        prorate(fee("b", "1"), APRIL, at, kind="charge", currency_code="XXX")
    with pytest.raises(TypeError):
        prorate("base", APRIL, at, kind="charge", currency_code="USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64"):
        prorate(fee("b", "1E+20"), APRIL, at, kind="charge", currency_code="KWD")


def test_change_lines_orders_credits_then_charges_in_input_order() -> None:
    old = [fee("base", "100"), fee("seats:a", "50", "5"), fee("addon", "9")]
    new = [fee("base", "200"), fee("storage", "30"), fee("seats:a", "70", "7")]
    lines = change_lines(old, new, APRIL, utc(2027, 4, 21), "USD")
    assert amounts(lines) == [
        ("credit", "base", -3333),
        ("credit", "seats:a", -1667),
        ("credit", "addon", -300),
        ("charge", "base", 6667),
        ("charge", "storage", 1000),
        ("charge", "seats:a", 2333),
    ]


def test_a_fee_unchanged_by_the_change_gets_no_lines() -> None:
    # Five seats to seven at 12 USD a seat; the base fee stays as it was.
    old = [fee("base", "100"), fee("seats:pro", "60", "5")]
    new = [fee("base", "100.00"), fee("seats:pro", "84", "7")]
    lines = change_lines(old, new, APRIL, utc(2027, 4, 16), "USD")
    assert amounts(lines) == [("credit", "seats:pro", -3000), ("charge", "seats:pro", 4200)]
    # Same code and amount but a new description is a change: both lines.
    renamed = change_lines(
        old[:1], [fee("base", "100", description="Base (2027)")], APRIL, utc(2027, 4, 16), "USD"
    )
    assert amounts(renamed) == [("credit", "base", -5000), ("charge", "base", 5000)]


def test_lines_that_round_to_zero_are_left_out() -> None:
    last_second = utc(2027, 4, 30, 23, 59, 59)
    lines = change_lines([fee("base", "100")], [fee("base", "200000")], APRIL, last_second, "JPY")
    # One second left: 100 yen x 1/2592000 and 200000 yen x 1/2592000 (0.077) round to 0.
    assert lines == []
    lines = change_lines([fee("base", "100")], [fee("base", "2000000")], APRIL, last_second, "JPY")
    assert amounts(lines) == [("charge", "base", 1)]  # 0.77 yen


def test_change_lines_checks_the_instant_even_when_nothing_changes() -> None:
    assert change_lines([], [], APRIL, utc(2027, 4, 16), "USD") == []
    with pytest.raises(ValueError, match="not within the period"):
        change_lines([], [], APRIL, utc(2027, 5, 16), "USD")


def test_change_lines_refuses_a_fee_code_twice_on_one_side() -> None:
    with pytest.raises(ValueError, match="twice among the new fees"):
        change_lines([], [fee("base", "1"), fee("base", "2")], APRIL, utc(2027, 4, 16), "USD")


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("amount", 10.0, TypeError),
        ("amount", 10, TypeError),
        ("amount", Decimal("-1"), ValueError),
        ("amount", Decimal("NaN"), ValueError),
        ("amount", Decimal("Infinity"), ValueError),
        ("quantity", 1.0, TypeError),
        ("quantity", Decimal("-1"), ValueError),
        ("code", "", ValueError),
    ],
)
def test_fee_refuses_floats_negatives_and_blanks(field: str, value: object, error: type[Exception]) -> None:
    arguments: dict[str, object] = {
        "code": "base",
        "description": "Base",
        "amount": Decimal(1),
        "quantity": Decimal(1),
    }
    arguments[field] = value
    with pytest.raises(error):
        Fee(**arguments)  # type: ignore[arg-type]

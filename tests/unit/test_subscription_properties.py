"""Hypothesis properties of billing periods and proration, over zones, anchors, prices and currencies."""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from billing_svc.subscriptions.periods import (
    MAX_INTERVAL_COUNT,
    Cycle,
    Interval,
    IntervalUnit,
    Period,
    day_start,
    local_date,
)
from billing_svc.subscriptions.proration import Fee, change_lines, prorate, remaining_fraction
from core import currencies
from core.money import DECIMAL_CONTEXT

SECOND = timedelta(seconds=1)

# Zones with something to say: DST both ways, odd offsets (+05:45, Lord Howe's half-hour
# change, Chatham's +12:45), changes at midnight (Santiago, Havana, Beirut), a gap that
# swallowed midnight (Toronto 1919) and a skipped day (Apia 2011).
ZONE_NAMES = [
    "UTC",
    "America/New_York",
    "Asia/Kathmandu",
    "America/Santiago",
    "America/Havana",
    "Asia/Beirut",
    "America/Toronto",
    "Pacific/Apia",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Europe/London",
]

zones = st.sampled_from(ZONE_NAMES).map(ZoneInfo)
units = st.sampled_from(list(IntervalUnit))
# Counts up to the limit, but kept small enough that 60 periods stay within the calendar.
intervals = units.flatmap(
    lambda unit: st.builds(Interval, st.just(unit), st.integers(1, min(MAX_INTERVAL_COUNT[unit], 24)))
)
anchors = st.dates(date(1900, 1, 1), date(2200, 12, 31))
cycles = st.builds(Cycle, anchors, zones, intervals)
indexes = st.integers(0, 60)


def nominal_day(cycle: Cycle, index: int) -> int:
    """The day of the month boundary `index` should fall on, clamped, computed independently."""
    months = index * cycle.interval.count * (12 if cycle.interval.unit is IntervalUnit.YEAR else 1)
    year, month = divmod(cycle.anchor.year * 12 + cycle.anchor.month - 1 + months, 12)
    return min(cycle.anchor.day, calendar.monthrange(year, month + 1)[1])


# ---------------------------------------------------------------- periods


@given(cycles, indexes)
def test_boundaries_move_forward(cycle: Cycle, index: int) -> None:
    here, there = cycle.boundary(index), cycle.boundary(index + 1)
    # Only a one-day period can be empty: a local date the zone skipped (Apia, 2011-12-30).
    if cycle.interval == Interval(IntervalUnit.DAY):
        assert here <= there
    else:
        assert here < there


@given(cycles, indexes)
@example(Cycle(date(2022, 8, 11), ZoneInfo("America/Santiago"), Interval(IntervalUnit.MONTH)), 1)
@example(Cycle(date(1919, 3, 30), ZoneInfo("America/Toronto"), Interval(IntervalUnit.DAY)), 1)
def test_a_boundary_is_the_first_instant_of_its_local_date(cycle: Cycle, index: int) -> None:
    day = cycle.boundary_date(index)
    boundary = cycle.boundary(index)
    assert boundary.microsecond == 0
    assert local_date(boundary, cycle.zone) >= day
    assert local_date(boundary - SECOND, cycle.zone) < day
    if local_date(boundary, cycle.zone) != day:  # only for a date the zone skipped entirely
        assert day_start(day + timedelta(days=1), cycle.zone) == boundary


@given(cycles.filter(lambda c: c.interval.unit in (IntervalUnit.MONTH, IntervalUnit.YEAR)), indexes)
def test_monthly_and_yearly_boundaries_keep_the_anchor_day(cycle: Cycle, index: int) -> None:
    day = cycle.boundary_date(index)
    assert day.day == nominal_day(cycle, index)
    if cycle.interval.unit is IntervalUnit.YEAR:
        assert day.month == cycle.anchor.month


@given(cycles, st.integers(0, 40), st.integers(0, 10**12))
def test_period_at_finds_the_period_containing_the_instant(cycle: Cycle, index: int, offset: int) -> None:
    period = cycle.period(index)
    assume(period.seconds > 0)
    instant = period.start + timedelta(microseconds=offset % (period.seconds * 10**6))
    found = cycle.period_at(instant)
    assert found == period
    assert found.contains(instant)
    assert cycle.period_at(period.start) == period


@given(cycles, st.integers(1, 10**6))
def test_nothing_before_the_first_boundary_has_a_period(cycle: Cycle, microseconds: int) -> None:
    with pytest.raises(ValueError, match="before the cycle's first period"):
        cycle.period_at(cycle.boundary(0) - timedelta(microseconds=microseconds))


# ---------------------------------------------------------------- proration


def scaled(coefficient: int, places: int) -> Decimal:
    return DECIMAL_CONTEXT.scaleb(Decimal(coefficient), -places)


# Unit prices as parse_unit_price allows them (0 to 12 places), up to a million; quantities
# up to 10,000 with up to 3 places; a fee's amount is their exact product.
prices = st.integers(0, 12).flatmap(
    lambda places: st.builds(scaled, st.integers(0, 10 ** (6 + places)), st.just(places))
)
quantities = st.builds(scaled, st.integers(0, 10**7), st.integers(0, 3))
codes = st.sampled_from(sorted(currencies.EXPONENTS))


@st.composite
def fees(draw: st.DrawFn, code: str | None = None) -> Fee:
    price, quantity = draw(prices), draw(quantities)
    fee_code = code or draw(st.sampled_from(["base", "seats:pro", "seats:team", "addon"]))
    return Fee(fee_code, fee_code, DECIMAL_CONTEXT.multiply(price, quantity), quantity)


@st.composite
def moments(draw: st.DrawFn) -> tuple[Period, datetime]:
    """A non-empty period of some cycle, and an instant in it (to the microsecond)."""
    cycle, index = draw(cycles), draw(st.integers(0, 24))
    period = cycle.period(index)
    assume(period.seconds > 0)
    offset = draw(st.integers(0, period.seconds * 10**6 - 1))
    return period, period.start + timedelta(microseconds=offset)


def exact_minor(fee: Fee, fraction: Fraction, code: str) -> Fraction:
    return Fraction(fee.amount) * fraction * 10 ** currencies.exponent(code)


@given(moments(), fees("base"), fees("base"), codes)
@example(
    (
        Period(datetime.fromisoformat("2027-04-01T00:00Z"), datetime.fromisoformat("2027-05-01T00:00Z"), 0),
        datetime.fromisoformat("2027-04-16T00:00Z"),
    ),
    Fee("base", "", Decimal("0.25"), Decimal(1)),
    Fee("base", "", Decimal("0.75"), Decimal(1)),
    "USD",
)
def test_credit_plus_charge_is_within_one_minor_unit_of_the_exact_difference(
    moment: tuple[Period, datetime], old: Fee, new: Fee, code: str
) -> None:
    """Each line is within half a minor unit of its exact value, so the pair within one."""
    period, at = moment
    lines = change_lines([old], [new], period, at, code)
    fraction = remaining_fraction(period, at)
    exact = exact_minor(new, fraction, code) - exact_minor(old, fraction, code)
    assert abs(sum(line.amount_minor for line in lines) - exact) <= 1
    for line in lines:
        source = old if line.kind == "credit" else new
        sign = -1 if line.kind == "credit" else 1
        assert abs(line.amount_minor - sign * exact_minor(source, fraction, code)) <= Fraction(1, 2)
        assert line.fraction == fraction


@given(moments(), st.lists(fees(), max_size=4), st.lists(fees(), max_size=4), codes)
def test_many_fees_stay_within_half_a_minor_unit_per_fee(
    moment: tuple[Period, datetime], old: list[Fee], new: list[Fee], code: str
) -> None:
    period, at = moment
    old = list({fee.code: fee for fee in old}.values())
    new = list({fee.code: fee for fee in new}.values())
    lines = change_lines(old, new, period, at, code)
    fraction = remaining_fraction(period, at)
    charged = sum((exact_minor(f, fraction, code) for f in new), Fraction(0))
    exact = charged - sum((exact_minor(f, fraction, code) for f in old), Fraction(0))
    assert abs(sum(line.amount_minor for line in lines) - exact) <= Fraction(len(old) + len(new), 2)
    kinds = [line.kind for line in lines]
    assert kinds == sorted(kinds, key=lambda kind: kind != "credit")  # credits first


@given(moments(), st.lists(fees(), max_size=4), st.lists(fees(), max_size=4), codes)
def test_changing_and_changing_back_at_the_same_instant_nets_exactly_zero(
    moment: tuple[Period, datetime], old: list[Fee], new: list[Fee], code: str
) -> None:
    """Stronger than "at most a minor unit of drift per line": there is none.

    Going back credits each new fee over the same slice it was charged for, and a
    credit is the exact negation of that charge (one rounding, symmetric about
    zero); likewise for the old fees. So every line of the way back negates a line
    of the way there, and the two changes sum to exactly zero.
    """
    period, at = moment
    old = list({fee.code: fee for fee in old}.values())
    new = list({fee.code: fee for fee in new}.values())
    there = change_lines(old, new, period, at, code)
    back = change_lines(new, old, period, at, code)
    flipped = {"credit": "charge", "charge": "credit"}
    assert sorted((flipped[line.kind], line.fee_code, -line.amount_minor) for line in back) == sorted(
        (line.kind, line.fee_code, line.amount_minor) for line in there
    )
    assert sum(line.amount_minor for line in there + back) == 0


@given(moments(), fees(), codes)
def test_a_credit_is_the_exact_negation_of_the_charge(
    moment: tuple[Period, datetime], fee: Fee, code: str
) -> None:
    period, at = moment
    credit = prorate(fee, period, at, kind="credit", currency_code=code)
    charge = prorate(fee, period, at, kind="charge", currency_code=code)
    assert credit.amount_minor == -charge.amount_minor
    assert (credit.start, credit.end, credit.fraction) == (charge.start, charge.end, charge.fraction)
    assert charge.amount_minor >= 0
    assert 0 < charge.fraction <= 1
    assert charge.start == at.replace(microsecond=0) and charge.end == period.end
    assert charge.fraction == Fraction((period.end - charge.start) // SECOND, period.seconds)


@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["amount", "quantity"]))
def test_no_float_is_accepted_for_a_fee(value: float, field: str) -> None:
    arguments: dict[str, object] = {
        "code": "base",
        "description": "",
        "amount": Decimal(1),
        "quantity": Decimal(1),
    }
    arguments[field] = value
    with pytest.raises(TypeError):
        Fee(**arguments)  # type: ignore[arg-type]

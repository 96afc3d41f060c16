"""A meter's quantity over [start, end) for each aggregation (billing_svc.usage.aggregation)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_svc.catalog.domain import Aggregation
from billing_svc.usage.aggregation import aggregate, round_units, weighted_mean

START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 3, 31, tzinfo=UTC)  # 30 days


@dataclass(frozen=True)
class Ev:
    id: str
    event_time: datetime
    units: Decimal
    properties: Mapping[str, str] = field(default_factory=dict)


def ev(n: int, at: datetime, units: str, **properties: str) -> Ev:
    return Ev(f"usg_{n:04d}", at, Decimal(units), properties)


def day(n: float) -> datetime:
    return START + timedelta(days=n)


def quantity(aggregation: Aggregation, events: list[Ev], *, prop: str = "") -> Decimal:
    return aggregate(aggregation, events, start=START, end=END, property_name=prop)


EDGES = [ev(1, START, "2", user="a"), ev(2, day(3), "5", user="b"), ev(3, END, "100", user="c")]


def test_count_and_sum_follow_lagos_worked_examples() -> None:
    # getlago.com/docs/guide/billable-metrics/aggregation-types/count: two events -> 2 units;
    # .../aggregation-types/sum: total_requests 20 and 10 -> 30 units.
    events = [ev(1, day(15), "20"), ev(2, day(16), "10")]
    assert quantity(Aggregation.COUNT, events) == 2
    assert quantity(Aggregation.SUM, events) == 30


def test_an_event_at_start_is_in_and_one_at_end_is_out() -> None:
    assert quantity(Aggregation.COUNT, EDGES) == 2
    assert quantity(Aggregation.SUM, EDGES) == 7
    assert quantity(Aggregation.MAX, EDGES) == 5
    assert quantity(Aggregation.UNIQUE_COUNT, EDGES, prop="user") == 2
    assert quantity(Aggregation.LATEST, EDGES) == 5


def test_an_empty_period_is_zero_for_every_aggregation() -> None:
    outside = [ev(1, START - timedelta(microseconds=1), "4"), ev(2, END, "9")]
    for aggregation in Aggregation:
        if aggregation is Aggregation.WEIGHTED_SUM:
            continue
        assert quantity(aggregation, outside, prop="user") == 0, aggregation
        assert quantity(aggregation, [], prop="user") == 0, aggregation
    assert quantity(Aggregation.WEIGHTED_SUM, []) == 0
    # The level from before the period holds through it.
    assert quantity(Aggregation.WEIGHTED_SUM, outside) == 4


def test_sum_takes_corrections_and_is_exact() -> None:
    events = [ev(1, day(1), "0.1"), ev(2, day(2), "0.2"), ev(3, day(3), "-0.3"), ev(4, day(4), "1e-12")]
    assert quantity(Aggregation.SUM, events) == Decimal("0.000000000001")
    big = [ev(1, day(1), "99999999999999999999999999.999999999999"), ev(2, day(2), "0.000000000001")]
    assert quantity(Aggregation.SUM, big) == Decimal("100000000000000000000000000")


def test_unique_count_skips_events_without_the_property() -> None:
    events = [
        ev(1, day(1), "1", user="a"),
        ev(2, day(2), "1", user="a"),
        ev(3, day(3), "1"),
        ev(4, day(4), "1", user=""),
    ]
    assert quantity(Aggregation.UNIQUE_COUNT, events, prop="user") == 2  # "a" and ""
    assert quantity(Aggregation.UNIQUE_COUNT, events, prop="region") == 0


def test_latest_breaks_a_tie_on_time_by_the_later_id() -> None:
    same = day(5)
    events = [ev(7, same, "3"), ev(9, same, "8"), ev(8, same, "5"), ev(1, day(2), "50")]
    assert quantity(Aggregation.LATEST, events) == 8


def test_weighted_sum_is_the_time_weighted_level() -> None:
    # 10 units from day 0, 10 more from day 15 (of 30): 10 x 1/2 + 20 x 1/2 = 15.
    events = [ev(1, START, "10"), ev(2, day(15), "10")]
    assert quantity(Aggregation.WEIGHTED_SUM, events) == 15
    # The level before start counts from start; a correction lowers the level from its time on.
    with_history = [ev(1, day(-40), "6"), ev(2, day(10), "-3"), ev(3, END, "1000")]
    assert quantity(Aggregation.WEIGHTED_SUM, with_history) == 4  # 6 x 1/3 + 3 x 2/3


def test_weighted_sum_rounds_once_half_up_at_twelve_places() -> None:
    # 1 unit for the last third of the period: 1/3, rounded down at the 12th place.
    assert quantity(Aggregation.WEIGHTED_SUM, [ev(1, day(20), "1")]) == Decimal("0.333333333333")
    assert quantity(Aggregation.WEIGHTED_SUM, [ev(1, day(10), "1")]) == Decimal("0.666666666667")
    # An exact tie at the 13th place goes away from zero (half-even would give ...2).
    assert round_units(Fraction(25, 10**13)) == Decimal("0.000000000003")
    assert round_units(Fraction(-25, 10**13)) == Decimal("-0.000000000003")
    # Microseconds count: one unit for the last microsecond of a one-second period.
    second = START + timedelta(seconds=1)
    assert weighted_mean(
        Decimal(0), [(second - timedelta(microseconds=1), Decimal(1))], START, second
    ) == Decimal("0.000001")


def test_an_empty_or_inverted_period_is_refused() -> None:
    with pytest.raises(ValueError, match="empty period"):
        aggregate(Aggregation.COUNT, [], start=END, end=END)
    with pytest.raises(ValueError, match="empty period"):
        weighted_mean(Decimal(0), [], END, START)


_units = st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False)
_offsets = st.integers(min_value=-(10**6), max_value=40 * 86400 * 10**6)  # microseconds from START


@st.composite
def _events(draw: st.DrawFn) -> list[Ev]:
    pairs = draw(st.lists(st.tuples(_offsets, _units), max_size=30))
    return [
        ev(n, START + timedelta(microseconds=offset), str(units)) for n, (offset, units) in enumerate(pairs)
    ]


@settings(max_examples=200, deadline=None)
@given(events=_events(), cut=st.integers(min_value=1, max_value=30 * 86400 * 10**6 - 1))
def test_sum_and_count_of_split_periods_add_up(events: list[Ev], cut: int) -> None:
    middle = START + timedelta(microseconds=cut)
    for aggregation in (Aggregation.SUM, Aggregation.COUNT):
        whole = aggregate(aggregation, events, start=START, end=END)
        first = aggregate(aggregation, events, start=START, end=middle)
        second = aggregate(aggregation, events, start=middle, end=END)
        assert first + second == whole


@settings(max_examples=200, deadline=None)
@given(events=_events(), cut=st.integers(min_value=1, max_value=30 * 86400 * 10**6 - 1))
def test_weighted_sum_of_split_periods_is_their_length_weighted_mean(events: list[Ev], cut: int) -> None:
    middle = START + timedelta(microseconds=cut)
    whole = aggregate(Aggregation.WEIGHTED_SUM, events, start=START, end=END)
    first = aggregate(Aggregation.WEIGHTED_SUM, events, start=START, end=middle)
    second = aggregate(Aggregation.WEIGHTED_SUM, events, start=middle, end=END)
    length = (END - START) // timedelta(microseconds=1)
    recombined = (Fraction(first) * cut + Fraction(second) * (length - cut)) / length
    # Each part is rounded at 12 places, so they agree to within one unit there.
    assert abs(recombined - Fraction(whole)) <= Fraction(1, 10**12)


@settings(max_examples=200, deadline=None)
@given(events=_events())
def test_max_and_latest_are_values_of_events_in_the_period(events: list[Ev]) -> None:
    inside = [event.units for event in events if START <= event.event_time < END]
    assert quantity(Aggregation.MAX, events) == max(inside, default=Decimal(0))
    latest = quantity(Aggregation.LATEST, events)
    assert latest in inside or (not inside and latest == 0)


def _stepwise_mean(events: list[Ev]) -> Fraction:
    """The level integrated step by step, event after event: the definition, spelled out."""
    micro = timedelta(microseconds=1)
    level = sum((Fraction(e.units) for e in events if e.event_time < START), Fraction(0))
    area, since = Fraction(0), START
    for event in sorted((e for e in events if START <= e.event_time < END), key=lambda e: e.event_time):
        area += level * ((event.event_time - since) // micro)
        level += Fraction(event.units)
        since = event.event_time
    area += level * ((END - since) // micro)
    return area / ((END - START) // micro)


@settings(max_examples=200, deadline=None)
@given(events=_events())
def test_weighted_sum_is_the_stepwise_integral_rounded_once(events: list[Ev]) -> None:
    assert quantity(Aggregation.WEIGHTED_SUM, events) == round_units(_stepwise_mean(events))

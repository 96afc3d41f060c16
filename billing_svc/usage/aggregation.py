"""A meter's quantity over a period, from its events, for each aggregation. Pure: no I/O.

The period is [start, end): an event exactly at `start` is in it, one exactly at `end` is not.
Every quantity is exact (Decimal arithmetic in core.money.DECIMAL_CONTEXT, which traps
Inexact); only WEIGHTED_SUM divides, and it rounds once, as stated below.

  COUNT         the number of events.
  SUM           the sum of their units; corrections are events with negative units.
  MAX           the largest units; 0 without events.
  UNIQUE_COUNT  the number of distinct values of the meter's `property`; an event without the
                property is not counted.
  LATEST        the units of the event with the latest event_time, ties broken by record id (the
                later id, which was received later, wins); 0 without events.
  WEIGHTED_SUM  every event moves a running level by its units (a gauge: +5 GB stored, -2 GB
                deleted). The level at `start` is the sum of every earlier event. The quantity is
                the time-weighted mean level over the period: the integral of the level over
                [start, end) divided by the period's length, time counted to the microsecond.
                The integral is level_before x length + the sum of units x (end - event_time)
                over the events inside (each change holds to the end), so the store can sum it
                in SQL without fetching the events. It is computed as an exact Fraction, then
                rounded once to UNITS_SCALE (12) decimal places, half-up (a tie away from
                zero), the rule core.money applies to every amount, so that a quantity and its
                price round alike.

The store does COUNT, SUM and MAX in SQL where it can (PostgreSQL's NUMERIC is exact); what it
fetches for the others goes through `weighted_mean` and friends here, and SQLite, which stores
units as text, gives its rows to `aggregate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Final, Protocol

from billing_svc.catalog.domain import Aggregation
from billing_svc.usage.tables import UNITS_SCALE
from core.money import DECIMAL_CONTEXT

_ZERO: Final = Decimal(0)
_C: Final = DECIMAL_CONTEXT
_MICROSECOND: Final = timedelta(microseconds=1)


class Event(Protocol):
    """What aggregation reads of a usage record (billing_svc.usage.domain.UsageRecord has it)."""

    @property
    def id(self) -> str: ...

    @property
    def event_time(self) -> datetime: ...

    @property
    def units(self) -> Decimal: ...

    @property
    def properties(self) -> Mapping[str, str]: ...


def total(values: Iterable[Decimal]) -> Decimal:
    """The exact sum (the default context's 28 digits could round a NUMERIC(38, 12) sum)."""
    result = _ZERO
    for value in values:
        result = _C.add(result, value)
    return result


def unique_count(events: Iterable[Event], property_name: str) -> int:
    return len({event.properties[property_name] for event in events if property_name in event.properties})


def latest(events: Iterable[Event]) -> Decimal:
    last = max(events, key=lambda event: (event.event_time, event.id), default=None)
    return last.units if last is not None else _ZERO


def round_units(value: Fraction) -> Decimal:
    """`value` at UNITS_SCALE decimal places, half-up (a tie away from zero)."""
    scaled = value * 10**UNITS_SCALE
    numerator, denominator = abs(scaled.numerator), scaled.denominator
    magnitude = (2 * numerator + denominator) // (2 * denominator)
    return Decimal(-magnitude if scaled < 0 else magnitude).scaleb(-UNITS_SCALE)


def weighted_area(changes: Iterable[tuple[datetime, Decimal]], end: datetime) -> Fraction:
    """The part of the level's integral up to `end` that changes inside the period add: each
    (time, units) holds its units from its time to `end`, so it adds units x (end - time), in
    unit-seconds. Order does not matter; the store computes the same sum in SQL."""
    area = Fraction(0)
    for time, units in changes:
        area += Fraction(units) * Fraction((end - time) // _MICROSECOND, 10**6)
    return area


def weighted_quantity(level_before: Decimal, area: Fraction, start: datetime, end: datetime) -> Decimal:
    """The mean level over [start, end): (level_before x length + area) / length, rounded once."""
    if end <= start:
        raise ValueError(f"empty period: end {end} is not after start {start}")
    length = Fraction((end - start) // _MICROSECOND, 10**6)
    return round_units((Fraction(level_before) * length + area) / length)


def weighted_mean(
    level_before: Decimal, changes: Iterable[tuple[datetime, Decimal]], start: datetime, end: datetime
) -> Decimal:
    """The mean level over [start, end): `level_before` at `start`, then each (time, units) change,
    every time in [start, end). Rounded once, as the module doc says."""
    return weighted_quantity(level_before, weighted_area(changes, end), start, end)


def aggregate(
    aggregation: Aggregation,
    events: Iterable[Event],
    *,
    start: datetime,
    end: datetime,
    property_name: str = "",
) -> Decimal:
    """The meter's quantity over [start, end) from `events`, in any order. Events before `start`
    count only for WEIGHTED_SUM (the level at start); events at or after `end` never count."""
    if end <= start:
        raise ValueError(f"empty period: end {end} is not after start {start}")
    every = list(events)
    inside = [event for event in every if start <= event.event_time < end]
    if aggregation is Aggregation.COUNT:
        return Decimal(len(inside))
    if aggregation is Aggregation.SUM:
        return total(event.units for event in inside)
    if aggregation is Aggregation.MAX:
        return max((event.units for event in inside), default=_ZERO)
    if aggregation is Aggregation.UNIQUE_COUNT:
        return Decimal(unique_count(inside, property_name))
    if aggregation is Aggregation.LATEST:
        return latest(inside)
    if aggregation is Aggregation.WEIGHTED_SUM:
        before = total(event.units for event in every if event.event_time < start)
        return weighted_mean(before, [(event.event_time, event.units) for event in inside], start, end)
    raise ValueError(f"unknown aggregation {aggregation!r}")

"""Billing periods: where each period of a subscription begins and ends, in real instants.

Tally's decisions, each pinned by tests/unit/test_periods.py:

- Period boundaries are local midnights in the account's billing time zone (an
  IANA name, read by `zone_named`). A period is the half-open interval of UTC
  instants [start, end).
- Billing days are whole local days. A subscription started at 14:23 has a
  nominal first period that starts at that day's local midnight; its anchor is
  the local date it started on (`Cycle.from_start`).
- A day on which the clocks change is 23 or 25 hours long (or 23.5, or ...):
  periods are measured in real seconds, so a monthly period containing a spring
  change is one hour shorter than its neighbours. Proration divides by those
  real seconds.
- Where local midnight does not exist (clocks jump forward at 00:00, as in
  America/Havana or America/Santiago), the day begins at the first instant
  that carries its date: the transition. Where midnight happens twice (clocks
  go back at 01:00 to 00:00), the day begins at the first occurrence. A local
  date skipped entirely (Pacific/Apia, 2011-12-30) begins where the next one
  does, so a daily period on it is empty.
- Monthly and yearly boundaries keep the anchor's day of the month, clamped to
  the month's length, and are always computed from the anchor rather than
  from the previous boundary, so a clamped day is never lost: anchor Jan 31
  gives Feb 28 (Feb 29 in a leap year), then Mar 31, Apr 30. A yearly Feb 29
  anchor renews on Feb 28 in common years and on Feb 29 in leap years.
- An interval is at most three years long: 1,095 days, 156 weeks, 36 months
  or 3 years (`MAX_INTERVAL_COUNT`), the limit Stripe states for
  `interval_count` on recurring prices.
- A trial ends on a local midnight: `trial_end` is the start of the local day
  `trial_days` after the day the subscription started, and the first paid
  period begins there.

Boundaries are whole seconds, because time zone offsets and transitions are.
Time zones come from the standard library's `zoneinfo` (the `tzdata` package
supplies the IANA database where the system has none). Nothing here reads the
clock or does I/O: every instant is an argument.
"""

from __future__ import annotations

import calendar
import functools
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo

from core.errors import InvalidArgument

_SECOND: Final = timedelta(seconds=1)


class IntervalUnit(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


# Three years in every unit, the limit Stripe states for interval_count ("3 years, 36 months,
# or 156 weeks"; days are ours, 3 x 365), in its API text as stripe-ruby ships it:
# https://rubydoc.info/gems/stripe/Stripe/SubscriptionCreateParams/Item/PriceData/Recurring
MAX_INTERVAL_COUNT: Final[Mapping[IntervalUnit, int]] = MappingProxyType(
    {IntervalUnit.DAY: 1095, IntervalUnit.WEEK: 156, IntervalUnit.MONTH: 36, IntervalUnit.YEAR: 3}
)

# Names zoneinfo can load that are not zones a customer lives in: this machine's own
# zone (so a result would depend on the host), a placeholder and a POSIX rules template.
_NOT_BILLING_ZONES: Final = frozenset({"localtime", "Factory", "posixrules"})


def _require_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def _require_aware(instant: object, what: str) -> datetime:
    if not isinstance(instant, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return instant


def _require_date(day: object, what: str) -> date:
    # A datetime is a date too; taking one here would silently drop its time and zone.
    if isinstance(day, datetime) or not isinstance(day, date):
        raise TypeError(f"{what} must be a date, not {type(day).__name__}")
    return day


def _require_zone(zone: object) -> ZoneInfo:
    if not isinstance(zone, ZoneInfo):
        raise TypeError(f"zone must be a zoneinfo.ZoneInfo, not {type(zone).__name__}")
    return zone


@dataclass(frozen=True, slots=True)
class Interval:
    """How long one period is: `count` days, weeks, months or years."""

    unit: IntervalUnit
    count: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.unit, IntervalUnit):
            raise TypeError(f"unit must be an IntervalUnit, not {type(self.unit).__name__}")
        count = _require_int(self.count, "count")
        limit = MAX_INTERVAL_COUNT[self.unit]
        if not 1 <= count <= limit:
            raise ValueError(f"an interval is 1 to {limit} {self.unit}s, not {count}")


@functools.cache
def _zone_names() -> frozenset[str]:
    # Listed once, on first use (it walks the zone directories), never at import time.
    return frozenset(zoneinfo.available_timezones()) - _NOT_BILLING_ZONES


def zone_named(name: str, *, field: str) -> ZoneInfo:
    """The IANA time zone `name` (such as Europe/Paris or UTC); InvalidArgument naming `field` if none.

    Only names of the IANA database are accepted, spelt exactly (no file paths, no
    "localtime"). The empty string is refused too: a caller with a default (UTC)
    applies it before calling. The name is not echoed back in the error.
    """
    if not isinstance(name, str):
        raise TypeError(f"a time zone name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidArgument.field(field, "is required: an IANA time zone name such as Europe/Paris or UTC")
    if name not in _zone_names():
        raise InvalidArgument.field(field, "must be an IANA time zone name such as Europe/Paris or UTC")
    try:
        return ZoneInfo(name)
    except (ValueError, OSError) as error:  # listed but unreadable: still the caller's bad value
        raise InvalidArgument.field(field, "names a time zone whose data cannot be read") from error


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    """The calendar date in `zone` at `instant`."""
    _require_aware(instant, "instant")
    return instant.astimezone(_require_zone(zone)).date()


def _to_utc(local: datetime) -> datetime:
    try:
        return local.astimezone(UTC)
    except OverflowError as error:
        raise ValueError(f"{local.date()} is outside the range of datetimes") from error


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant at which the local `day` begins in `zone`.

    Local midnight when it exists; its first occurrence when it happens twice; and
    where the clocks jump over midnight, the first instant that carries `day`'s date
    (the transition itself).
    """
    _require_date(day, "day")
    _require_zone(zone)
    midnight = datetime.combine(day, time(0))
    # fold=0 is the earlier reading of an ambiguous wall time: the first midnight.
    first = _to_utc(midnight.replace(tzinfo=zone))
    if first.astimezone(zone).replace(tzinfo=None) == midnight:
        return first
    # Midnight falls in a gap. Read with the new offset it lands before the transition
    # (still on an earlier date); with the old one, at or after it. Transitions are whole
    # seconds, so bisect on seconds for the first instant whose local date is `day` or later.
    before = _to_utc(midnight.replace(tzinfo=zone, fold=1))
    after = first
    while after - before > _SECOND:
        middle = before + _SECOND * (((after - before) // _SECOND) // 2)
        if middle.astimezone(zone).date() >= day:
            after = middle
        else:
            before = middle
    return after


def add_days_local(instant: datetime, days: int, zone: ZoneInfo) -> date:
    """The local date `days` calendar days after (or before, if negative) `instant`'s local date."""
    start = local_date(instant, zone)
    try:
        return start + timedelta(days=_require_int(days, "days"))
    except OverflowError as error:
        raise ValueError(f"{start} plus {days} days is outside the calendar") from error


def trial_end(start: datetime, trial_days: int, zone: ZoneInfo) -> datetime:
    """The UTC instant a trial of `trial_days` local days, started at `start`, ends.

    The trial runs to the local midnight `trial_days` days after the day it began
    (a trial started at 14:23 on the 1st with 14 days ends at 00:00 on the 15th), and
    the first paid period starts there, anchored on that date.
    """
    if _require_int(trial_days, "trial_days") < 1:
        raise ValueError(f"a trial lasts at least one day, not {trial_days}")
    return day_start(add_days_local(start, trial_days, zone), zone)


@dataclass(frozen=True, slots=True)
class Period:
    """One billing period: the UTC instants [start, end), the `index`-th of its cycle (from 0).

    Aware datetimes in any zone are accepted and kept in UTC, so that subtracting
    them always gives real elapsed time (Python subtracts two datetimes of one
    zone by wall clock).
    """

    start: datetime
    end: datetime
    index: int

    def __post_init__(self) -> None:
        start = _require_aware(self.start, "start").astimezone(UTC)
        end = _require_aware(self.end, "end").astimezone(UTC)
        if start.microsecond or end.microsecond:
            raise ValueError("period boundaries are whole seconds")
        if end < start:
            raise ValueError(f"a period cannot end ({end}) before it starts ({start})")
        if _require_int(self.index, "index") < 0:
            raise ValueError(f"a period index is 0 or more, not {self.index}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @property
    def seconds(self) -> int:
        """The period's length in real seconds."""
        return (self.end - self.start) // _SECOND

    def contains(self, instant: datetime) -> bool:
        return self.start <= _require_aware(instant, "instant") < self.end


def _add_months(anchor: date, months: int) -> date:
    """`anchor` moved by whole months, its day clamped to the target month's length."""
    position = anchor.year * 12 + anchor.month - 1 + months
    year, month = divmod(position, 12)
    if not 1 <= year <= 9999:
        raise ValueError(f"{anchor} plus {months} months is outside the calendar")
    return date(year, month + 1, min(anchor.day, calendar.monthrange(year, month + 1)[1]))


def _months_between(earlier: date, later: date) -> int:
    return (later.year - earlier.year) * 12 + later.month - earlier.month


@dataclass(frozen=True, slots=True)
class Cycle:
    """The periods of one subscription: from the local `anchor` date, every `interval`, in `zone`."""

    anchor: date
    zone: ZoneInfo
    interval: Interval

    def __post_init__(self) -> None:
        _require_date(self.anchor, "anchor")
        _require_zone(self.zone)
        if not isinstance(self.interval, Interval):
            raise TypeError(f"interval must be an Interval, not {type(self.interval).__name__}")

    @classmethod
    def from_start(cls, start: datetime, zone: ZoneInfo, interval: Interval) -> Cycle:
        """The cycle of a subscription started at `start`: anchored on that local date."""
        return cls(local_date(start, zone), zone, interval)

    def boundary_date(self, index: int) -> date:
        """The local date on which period `index` begins (the nominal date, before time zones)."""
        if _require_int(index, "index") < 0:
            raise ValueError(f"a period index is 0 or more, not {index}")
        steps = index * self.interval.count
        unit = self.interval.unit
        if unit is IntervalUnit.MONTH:
            return _add_months(self.anchor, steps)
        if unit is IntervalUnit.YEAR:
            return _add_months(self.anchor, 12 * steps)
        days = steps * (7 if unit is IntervalUnit.WEEK else 1)
        try:
            return self.anchor + timedelta(days=days)
        except OverflowError as error:
            raise ValueError(f"{self.anchor} plus {days} days is outside the calendar") from error

    def boundary(self, index: int) -> datetime:
        """The UTC instant period `index` begins (and period `index - 1` ends)."""
        return day_start(self.boundary_date(index), self.zone)

    def period(self, index: int) -> Period:
        return Period(self.boundary(index), self.boundary(index + 1), index)

    def period_at(self, instant: datetime) -> Period:
        """The period containing `instant`; ValueError if it is before the cycle's first boundary.

        The index is estimated from the calendar (whole intervals between the anchor and
        the instant's local date), which is off by at most one, then corrected by
        comparing with the real boundaries: a handful of boundaries at any distance.
        """
        _require_aware(instant, "instant")
        first = self.boundary(0)
        if instant < first:
            raise ValueError(f"{instant} is before the cycle's first period, which starts at {first}")
        index = max(0, self._estimate_index(local_date(instant, self.zone)))
        start = self.boundary(index)
        while start > instant:
            index -= 1
            start = self.boundary(index)
        end = self.boundary(index + 1)
        while end <= instant:
            index, start = index + 1, end
            end = self.boundary(index + 1)
        return Period(start, end, index)

    def _estimate_index(self, day: date) -> int:
        unit, count = self.interval.unit, self.interval.count
        if unit is IntervalUnit.DAY:
            return (day - self.anchor).days // count
        if unit is IntervalUnit.WEEK:
            return (day - self.anchor).days // (7 * count)
        months = _months_between(self.anchor, day)
        return months // (count if unit is IntervalUnit.MONTH else 12 * count)

"""Billing periods: month-end anchors, intervals, time zones and their transitions, trials.

Expected instants are worked out by hand from each zone's offsets (stated next to
each case), never by calling the code under test a second way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing_svc.subscriptions.periods import (
    MAX_INTERVAL_COUNT,
    Cycle,
    Interval,
    IntervalUnit,
    Period,
    add_days_local,
    day_start,
    local_date,
    trial_end,
    zone_named,
)
from core.errors import InvalidArgument

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)

MONTHLY = Interval(IntervalUnit.MONTH)
UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def dates(cycle: Cycle, count: int) -> list[date]:
    return [cycle.boundary_date(index) for index in range(count)]


def field_error(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        call()
    [violation] = caught.value.violations
    return violation.field, violation.description


# ---------------------------------------------------------------- month ends and intervals


def test_a_month_end_anchor_keeps_its_day_after_february() -> None:
    cycle = Cycle(date(2027, 1, 31), UTC_ZONE, MONTHLY)
    assert dates(cycle, 5) == [
        date(2027, 1, 31),
        date(2027, 2, 28),
        date(2027, 3, 31),
        date(2027, 4, 30),
        date(2027, 5, 31),
    ]
    leap = Cycle(date(2028, 1, 31), UTC_ZONE, MONTHLY)
    assert dates(leap, 3) == [date(2028, 1, 31), date(2028, 2, 29), date(2028, 3, 31)]


@pytest.mark.parametrize("year", [2027, 2028])
@pytest.mark.parametrize("day", [29, 30, 31])
def test_anchors_late_in_the_month_clamp_in_february_only(year: int, day: int) -> None:
    february = 29 if year == 2028 else 28
    cycle = Cycle(date(year, 1, day), UTC_ZONE, MONTHLY)
    expected = [
        date(year, 1, day),
        date(year, 2, min(day, february)),
        date(year, 3, day),
        date(year, 4, min(day, 30)),
    ]
    assert dates(cycle, 4) == expected


def test_a_long_run_of_months_never_loses_the_day() -> None:
    """Computed from the anchor each time: 29 Feb months later, the 31st is still the 31st."""
    cycle = Cycle(date(2027, 1, 31), UTC_ZONE, MONTHLY)
    assert cycle.boundary_date(12 * 30 + 2) == date(2057, 3, 31)
    assert cycle.boundary(12 * 30 + 2) == utc(2057, 3, 31)


def test_a_yearly_leap_day_anchor_falls_back_to_the_28th_and_returns() -> None:
    cycle = Cycle(date(2028, 2, 29), UTC_ZONE, Interval(IntervalUnit.YEAR))
    assert dates(cycle, 5) == [
        date(2028, 2, 29),
        date(2029, 2, 28),
        date(2030, 2, 28),
        date(2031, 2, 28),
        date(2032, 2, 29),
    ]


def test_quarterly_is_three_months_from_the_anchor() -> None:
    cycle = Cycle(date(2027, 11, 30), UTC_ZONE, Interval(IntervalUnit.MONTH, 3))
    assert dates(cycle, 5) == [
        date(2027, 11, 30),
        date(2028, 2, 29),
        date(2028, 5, 30),
        date(2028, 8, 30),
        date(2028, 11, 30),
    ]


def test_weekly_and_daily_intervals_count_calendar_days() -> None:
    fortnightly = Cycle(date(2027, 1, 1), UTC_ZONE, Interval(IntervalUnit.WEEK, 2))
    assert dates(fortnightly, 3) == [date(2027, 1, 1), date(2027, 1, 15), date(2027, 1, 29)]
    every_three_days = Cycle(date(2027, 2, 26), UTC_ZONE, Interval(IntervalUnit.DAY, 3))
    assert dates(every_three_days, 3) == [date(2027, 2, 26), date(2027, 3, 1), date(2027, 3, 4)]
    assert every_three_days.period(1) == Period(utc(2027, 3, 1), utc(2027, 3, 4), 1)


def test_biennial_keeps_month_and_day() -> None:
    cycle = Cycle(date(2027, 8, 31), UTC_ZONE, Interval(IntervalUnit.YEAR, 2))
    assert dates(cycle, 3) == [date(2027, 8, 31), date(2029, 8, 31), date(2031, 8, 31)]


@pytest.mark.parametrize(("unit", "limit"), [("day", 1095), ("week", 156), ("month", 36), ("year", 3)])
def test_an_interval_is_at_most_three_years(unit: str, limit: int) -> None:
    assert MAX_INTERVAL_COUNT[IntervalUnit(unit)] == limit
    assert Interval(IntervalUnit(unit), limit).count == limit
    with pytest.raises(ValueError, match=f"1 to {limit}"):
        Interval(IntervalUnit(unit), limit + 1)
    with pytest.raises(ValueError, match=f"1 to {limit}"):
        Interval(IntervalUnit(unit), 0)


def test_interval_refuses_loose_types() -> None:
    with pytest.raises(TypeError):
        Interval("month")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Interval(IntervalUnit.MONTH, True)
    with pytest.raises(TypeError):
        Interval(IntervalUnit.MONTH, 1.0)  # type: ignore[arg-type]


def test_cycle_refuses_a_datetime_anchor_and_negative_indexes() -> None:
    with pytest.raises(TypeError, match="date"):
        Cycle(datetime(2027, 1, 1, tzinfo=UTC), UTC_ZONE, MONTHLY)
    with pytest.raises(TypeError, match="ZoneInfo"):
        Cycle(date(2027, 1, 1), UTC, MONTHLY)  # type: ignore[arg-type]
    cycle = Cycle(date(2027, 1, 1), UTC_ZONE, MONTHLY)
    with pytest.raises(ValueError, match="0 or more"):
        cycle.boundary(-1)
    with pytest.raises(ValueError, match="calendar"):
        Cycle(date(9999, 1, 1), UTC_ZONE, MONTHLY).boundary(12)


# ---------------------------------------------------------------- time zones


def test_new_york_periods_are_an_hour_shorter_in_march_and_longer_in_november() -> None:
    # EST is UTC-5, EDT UTC-4; 2027's changes: March 14 and November 7.
    cycle = Cycle(date(2027, 2, 1), NEW_YORK, MONTHLY)
    february, march = cycle.period(0), cycle.period(1)
    assert (february.start, february.end) == (utc(2027, 2, 1, 5), utc(2027, 3, 1, 5))
    assert (march.start, march.end) == (utc(2027, 3, 1, 5), utc(2027, 4, 1, 4))
    assert march.seconds == 31 * 86400 - 3600
    assert cycle.period(2).seconds == 30 * 86400  # April: EDT at both ends

    autumn = Cycle(date(2027, 10, 1), NEW_YORK, MONTHLY)
    october, november = autumn.period(0), autumn.period(1)
    assert (october.start, october.end) == (utc(2027, 10, 1, 4), utc(2027, 11, 1, 4))
    assert (november.start, november.end) == (utc(2027, 11, 1, 4), utc(2027, 12, 1, 5))
    assert november.seconds == 30 * 86400 + 3600


def test_new_york_change_days_are_23_and_25_hours() -> None:
    daily = Cycle(date(2027, 3, 14), NEW_YORK, Interval(IntervalUnit.DAY))
    assert daily.period(0) == Period(utc(2027, 3, 14, 5), utc(2027, 3, 15, 4), 0)
    assert daily.period(0).seconds == 23 * 3600
    november = Cycle(date(2027, 11, 7), NEW_YORK, Interval(IntervalUnit.DAY))
    assert november.period(0).seconds == 25 * 3600


def test_kathmandu_midnight_is_the_previous_day_at_18_15_utc() -> None:
    # Nepal is UTC+05:45 all year.
    cycle = Cycle(date(2027, 1, 15), zone_named("Asia/Kathmandu", field="zone"), MONTHLY)
    assert cycle.boundary(0) == utc(2027, 1, 14, 18, 15)
    assert cycle.boundary(1) == utc(2027, 2, 14, 18, 15)
    assert cycle.period(0).seconds == 31 * 86400


def test_santiago_skips_midnight_and_the_day_starts_at_the_transition() -> None:
    # 2022-09-11: at 24:00 on the 10th (UTC-4) clocks went to 01:00 (UTC-3): 04:00 UTC.
    santiago = zone_named("America/Santiago", field="zone")
    start = day_start(date(2022, 9, 11), santiago)
    assert start == utc(2022, 9, 11, 4)
    assert (start - SECOND).astimezone(santiago).replace(tzinfo=None) == datetime(2022, 9, 10, 23, 59, 59)
    assert (start - SECOND).utcoffset() != start.astimezone(santiago).utcoffset()
    assert start.astimezone(santiago).replace(tzinfo=None) == datetime(2022, 9, 11, 1, 0)
    assert start.astimezone(santiago).utcoffset() == -3 * HOUR
    # The day before lost nothing; the day itself has 23 hours.
    assert day_start(date(2022, 9, 12), santiago) - start == 23 * HOUR
    assert start - day_start(date(2022, 9, 10), santiago) == 24 * HOUR


def test_havana_gap_at_midnight_in_march_and_twice_midnight_in_november() -> None:
    havana = zone_named("America/Havana", field="zone")
    # 2022-03-13: at 00:00 CST (UTC-5) clocks jumped to 01:00 CDT: the day starts at 05:00 UTC.
    assert day_start(date(2022, 3, 13), havana) == utc(2022, 3, 13, 5)
    assert utc(2022, 3, 13, 5).astimezone(havana).hour == 1
    # 2022-11-06: at 01:00 CDT (UTC-4) clocks went back to 00:00 CST, so 00:00 happened at
    # 04:00 UTC and again at 05:00 UTC. The day starts at the first.
    assert utc(2022, 11, 6, 5).astimezone(havana).replace(tzinfo=None) == datetime(2022, 11, 6, 0, 0)
    assert day_start(date(2022, 11, 6), havana) == utc(2022, 11, 6, 4)
    assert day_start(date(2022, 11, 7), havana) - day_start(date(2022, 11, 6), havana) == 25 * HOUR


def test_toronto_1919_midnight_inside_a_gap_starts_the_day_at_the_transition() -> None:
    # 1919-03-30 at 23:30 EST (UTC-5), Toronto moved to 00:30 EDT: midnight lay inside
    # the gap, not at its edge, and the 31st began at 04:30 UTC.
    toronto = zone_named("America/Toronto", field="zone")
    start = day_start(date(1919, 3, 31), toronto)
    assert start == utc(1919, 3, 31, 4, 30)
    assert start.astimezone(toronto).replace(tzinfo=None) == datetime(1919, 3, 31, 0, 30)
    assert (start - SECOND).astimezone(toronto).replace(tzinfo=None) == datetime(1919, 3, 30, 23, 29, 59)


def test_apia_skipped_a_whole_day_which_is_empty() -> None:
    # 2011-12-29 23:59:59 (UTC-10) was followed by 2011-12-31 00:00 (UTC+14), at 10:00 UTC.
    apia = zone_named("Pacific/Apia", field="zone")
    assert day_start(date(2011, 12, 30), apia) == utc(2011, 12, 30, 10)
    assert day_start(date(2011, 12, 31), apia) == utc(2011, 12, 30, 10)
    daily = Cycle(date(2011, 12, 29), apia, Interval(IntervalUnit.DAY))
    assert daily.period(1).seconds == 0
    assert daily.period_at(utc(2011, 12, 30, 10)).index == 2
    assert daily.period_at(utc(2011, 12, 30, 9, 59, 59)).index == 0
    # A monthly cycle on the 30th just starts that period at the transition.
    monthly = Cycle(date(2011, 11, 30), apia, MONTHLY)
    assert monthly.period(0) == Period(utc(2011, 11, 30, 10), utc(2011, 12, 30, 10), 0)


def test_utc_boundaries_are_plain_midnights() -> None:
    cycle = Cycle(date(2027, 1, 31), zone_named("UTC", field="zone"), MONTHLY)
    assert cycle.period(1) == Period(utc(2027, 2, 28), utc(2027, 3, 31), 1)


def test_local_date_and_add_days_follow_the_zone() -> None:
    late_evening = utc(2027, 3, 1, 3, 30)  # 22:30 EST on February 28
    assert local_date(late_evening, NEW_YORK) == date(2027, 2, 28)
    assert local_date(late_evening, UTC_ZONE) == date(2027, 3, 1)
    assert add_days_local(late_evening, 14, NEW_YORK) == date(2027, 3, 14)
    assert add_days_local(late_evening, -28, NEW_YORK) == date(2027, 1, 31)
    with pytest.raises(ValueError, match="timezone-aware"):
        local_date(datetime(2027, 3, 1), NEW_YORK)
    with pytest.raises(TypeError):
        add_days_local(late_evening, 1.5, NEW_YORK)  # type: ignore[arg-type]


# ---------------------------------------------------------------- zone names


@pytest.mark.parametrize("name", ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires", "Etc/GMT+5"])
def test_zone_named_loads_iana_names(name: str) -> None:
    assert zone_named(name, field="account.billing_time_zone").key == name


def test_zone_named_refuses_the_empty_name() -> None:
    field, description = field_error(lambda: zone_named("", field="account.billing_time_zone"))
    assert field == "account.billing_time_zone"
    assert description.startswith("is required")


@pytest.mark.parametrize(
    "name",
    [
        "Nowhere/City",
        "america/new_york",  # IANA names are spelt exactly
        "Asia/Tokyo ",
        "America",  # a directory of zones, not a zone
        "../etc/passwd",
        "/etc/localtime",
        "localtime",  # this machine's zone
        "Factory",
        "UTC\x00",
        "x" * 300,
    ],
)
def test_zone_named_refuses_other_names_without_echoing_them(name: str) -> None:
    field, description = field_error(lambda: zone_named(name, field="tz"))
    assert field == "tz"
    assert "IANA time zone name" in description
    assert name not in description


def test_zone_named_refuses_non_strings() -> None:
    with pytest.raises(TypeError):
        zone_named(None, field="tz")  # type: ignore[arg-type]


# ---------------------------------------------------------------- periods and period_at


def test_period_keeps_utc_and_real_seconds_whatever_zone_it_is_given() -> None:
    # Two datetimes in one zone subtract by wall clock in Python; a Period must not.
    period = Period(datetime(2027, 3, 1, tzinfo=NEW_YORK), datetime(2027, 4, 1, tzinfo=NEW_YORK), 0)
    assert period.start == utc(2027, 3, 1, 5) and period.start.tzinfo is UTC
    assert period.seconds == 31 * 86400 - 3600


def test_period_validation() -> None:
    with pytest.raises(ValueError, match="whole seconds"):
        Period(utc(2027, 1, 1), utc(2027, 2, 1) + timedelta(microseconds=1), 0)
    with pytest.raises(ValueError, match="before it starts"):
        Period(utc(2027, 2, 1), utc(2027, 1, 1), 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        Period(datetime(2027, 1, 1), utc(2027, 2, 1), 0)
    with pytest.raises(ValueError, match="0 or more"):
        Period(utc(2027, 1, 1), utc(2027, 2, 1), -1)


def test_period_at_includes_the_start_and_excludes_the_end() -> None:
    cycle = Cycle(date(2027, 1, 31), NEW_YORK, MONTHLY)
    march_31 = utc(2027, 3, 31, 4)  # EDT midnight
    assert cycle.period_at(march_31) == Period(march_31, utc(2027, 4, 30, 4), 2)
    assert cycle.period_at(march_31 - timedelta(microseconds=1)) == Period(utc(2027, 2, 28, 5), march_31, 1)
    assert cycle.period_at(utc(2027, 1, 31, 5)).index == 0
    with pytest.raises(ValueError, match="before the cycle's first period"):
        cycle.period_at(utc(2027, 1, 31, 5) - timedelta(microseconds=1))
    with pytest.raises(ValueError, match="timezone-aware"):
        cycle.period_at(datetime(2027, 3, 1))


class CountingCycle(Cycle):
    """Counts boundary computations, to show period_at does not walk the periods."""

    calls: list[int] = []  # noqa: RUF012 -- shared on purpose: the dataclass is frozen

    def boundary(self, index: int) -> datetime:
        CountingCycle.calls.append(index)
        return super().boundary(index)


@pytest.mark.parametrize(
    ("interval", "index", "expected_start"),
    [
        (Interval(IntervalUnit.MONTH), 1200, utc(2127, 1, 31, 5)),  # Jan 31, 2127, EST
        (Interval(IntervalUnit.MONTH), 1201, utc(2127, 2, 28, 5)),
        # 2127-01-31 is 36524 days on (24 leap days: 2028 to 2124 but not 2100), so
        # 36500 days is 2127-01-07 (EST), and 36400 days 100 days earlier, 2126-09-29 (EDT).
        (Interval(IntervalUnit.DAY), 36500, utc(2127, 1, 7, 5)),
        (Interval(IntervalUnit.WEEK, 2), 2600, utc(2126, 9, 29, 4)),
        (Interval(IntervalUnit.YEAR), 90, utc(2117, 1, 31, 5)),
    ],
)
def test_period_at_far_in_the_future_computes_a_handful_of_boundaries(
    interval: Interval, index: int, expected_start: datetime
) -> None:
    cycle = CountingCycle(date(2027, 1, 31), NEW_YORK, interval)
    for instant in (expected_start, expected_start + HOUR * 12):
        CountingCycle.calls.clear()
        period = cycle.period_at(instant)
        assert period.index == index
        assert period.start == expected_start
        assert len(CountingCycle.calls) <= 5, CountingCycle.calls


def test_from_start_anchors_on_the_local_day_a_subscription_began() -> None:
    # 14:23 EST on 2027-01-31 is 19:23 UTC; the first period starts at that day's local midnight.
    start = utc(2027, 1, 31, 19, 23)
    cycle = Cycle.from_start(start, NEW_YORK, MONTHLY)
    assert cycle.anchor == date(2027, 1, 31)
    assert cycle.period_at(start) == Period(utc(2027, 1, 31, 5), utc(2027, 2, 28, 5), 0)
    # Late evening in New York is already the next day in UTC: the local date decides.
    evening = Cycle.from_start(utc(2027, 2, 1, 3, 0), NEW_YORK, MONTHLY)
    assert evening.anchor == date(2027, 1, 31)


# ---------------------------------------------------------------- trials


def test_a_trial_ends_at_a_local_midnight_and_the_paid_cycle_starts_there() -> None:
    start = utc(2027, 3, 1, 19, 23)  # 14:23 EST
    end = trial_end(start, 14, NEW_YORK)
    assert end == utc(2027, 3, 15, 4)  # midnight EDT: the clocks changed on the 14th
    paid = Cycle(add_days_local(start, 14, NEW_YORK), NEW_YORK, MONTHLY)
    assert paid.boundary(0) == end
    assert paid.boundary(1) == utc(2027, 4, 15, 4)


def test_trial_days_count_from_the_local_date() -> None:
    # 22:00 EST on January 30 (03:00 UTC on the 31st): 7 local days later is February 6.
    assert trial_end(utc(2027, 1, 31, 3), 7, NEW_YORK) == utc(2027, 2, 6, 5)
    assert trial_end(utc(2027, 1, 31, 3), 7, UTC_ZONE) == utc(2027, 2, 7)
    # A trial ending on Santiago's skipped midnight ends at the transition.
    santiago = zone_named("America/Santiago", field="zone")
    assert trial_end(utc(2022, 9, 1, 15), 10, santiago) == utc(2022, 9, 11, 4)


def test_a_trial_lasts_at_least_a_day() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        trial_end(utc(2027, 1, 1), 0, UTC_ZONE)
    with pytest.raises(TypeError):
        trial_end(utc(2027, 1, 1), True, UTC_ZONE)

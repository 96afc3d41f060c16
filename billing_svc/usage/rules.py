"""The checks an event passes before it is stored, and its fingerprint. Pure: no I/O.

Field paths are relative to the event's CreateUsageRecordRequest. An event is checked whole,
so one error names every bad field of it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from billing_svc.catalog.domain import Aggregation, Meter
from billing_svc.usage.domain import UsageInput
from billing_svc.usage.tables import MAX_EVENT_ID, UNITS_SCALE
from core import ids
from core.errors import InvalidArgument, Violations
from core.text import excerpt

MAX_PROPERTIES = 32
MAX_PROPERTY_KEY = 64
MAX_PROPERTY_VALUE = 256
MAX_LISTED_SERVICES = 50
# Far below NUMERIC(38, 12)'s limit, far above any real quantity: a larger value is a bug upstream.
MAX_MAGNITUDE = Decimal("1e18")
_PLAIN_DIGITS = 18  # at most this many digits are below MAX_MAGNITUDE
EVENT_ID_PREFIX = "evt"
NEGATIVE_ALLOWED = frozenset({Aggregation.SUM, Aggregation.WEIGHTED_SUM})

# What google.type.Decimal allows: an optional sign, digits with an optional point, an optional
# exponent. Python's Decimal() also takes spaces, underscores, NaN and Infinity: refused here.
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_EVENT_ID = re.compile(rf"^[ -~]{{1,{MAX_EVENT_ID}}}$")


@dataclass(frozen=True)
class Window:
    """How far from the time of receipt an event's time may be."""

    late: timedelta  # TALLY_USAGE_LATE_WINDOW_HOURS
    future_skew: timedelta  # TALLY_USAGE_FUTURE_SKEW_SECONDS


@dataclass(slots=True)  # one per event: see billing_svc.usage.domain
class CheckedEvent:
    account_id: str
    meter: Meter
    units: Decimal
    price_per_unit: Decimal | None
    event_time: datetime  # as sent, or the time of receipt
    properties: Mapping[str, str]
    event_id: str
    event_id_assigned: bool
    fingerprint: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.account_id, self.event_id)


def _decimal(text: str, path: str, violations: Violations, *, required: bool) -> Decimal | None:
    if not text:
        if required:
            violations.add(path, "is required")
        return None
    if len(text) <= _PLAIN_DIGITS and text.isascii() and text.isdigit():
        # Whole units, the usual case: no sign, places or exponent to look at, and below the bound.
        return Decimal(text)
    if not _DECIMAL.match(text):
        violations.add(path, f"{excerpt(text)!r} is not a decimal number (such as 3 or 0.25)")
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:  # the pattern lets through nothing Decimal refuses; kept for safety
        violations.add(path, f"{excerpt(text)!r} is not a decimal number")
        return None
    if abs(value) >= MAX_MAGNITUDE:
        violations.add(path, f"must be smaller than {MAX_MAGNITUDE:,.0f} in magnitude")
        return None
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > UNITS_SCALE:
        violations.add(path, f"has more than {UNITS_SCALE} decimal places")
        return None
    return value + 0  # "-0" and "0.000" are zero; the stored value keeps no sign of zero


def _hours(delta: timedelta) -> str:
    hours = delta / timedelta(hours=1)
    return f"{hours:g} hours"


def check_event_time(
    sent: datetime | None, now: datetime, window: Window, violations: Violations
) -> datetime:
    """The event's time: as sent, if within the window around `now` (bounds included), else `now`."""
    if sent is None:
        return now
    if sent < now - window.late:
        violations.add(
            "usage_record.event_time",
            f"is older than the late-event window of {_hours(window.late)}: "
            f"events from {(now - window.late).isoformat()} on are accepted",
        )
    elif sent > now + window.future_skew:
        violations.add(
            "usage_record.event_time",
            f"is more than {window.future_skew.total_seconds():g} seconds in the future "
            f"(accepted up to {(now + window.future_skew).isoformat()})",
        )
    return sent


def _check_properties(properties: Mapping[str, str], violations: Violations) -> None:
    path = "usage_record.properties"
    if len(properties) > MAX_PROPERTIES:
        violations.add(path, f"has {len(properties)} entries; at most {MAX_PROPERTIES} are allowed")
        return
    for key, value in sorted(properties.items()):
        if not 1 <= len(key) <= MAX_PROPERTY_KEY:
            violations.add(path, f"key {excerpt(key)!r} must be 1 to {MAX_PROPERTY_KEY} characters")
        if len(value) > MAX_PROPERTY_VALUE:
            violations.add(f"{path}[{excerpt(key)}]", f"is longer than {MAX_PROPERTY_VALUE} characters")


def _event_id(item: UsageInput, violations: Violations) -> tuple[str, bool]:
    """The event's id, and whether the server assigned it."""
    for value, path in ((item.event_id, "usage_record.event_id"), (item.request_id, "request_id")):
        if value and not _EVENT_ID.match(value):
            violations.add(path, f"must be 1 to {MAX_EVENT_ID} printable ASCII characters (space to ~)")
    if item.event_id and item.request_id and item.event_id != item.request_id:
        violations.add(
            "request_id", "differs from usage_record.event_id; when both are set they must be equal"
        )
    if item.event_id or item.request_id:
        return item.event_id or item.request_id, False
    return ids.new_id(EVENT_ID_PREFIX), True


def unknown_service(code: str, active_codes: Sequence[str]) -> str:
    """The description of an unknown or archived service: the codes there are, at most ~50."""
    if not active_codes:
        return f"no meter has the code {excerpt(code)!r}, and there are no meters to record for"
    listed = ", ".join(active_codes[:MAX_LISTED_SERVICES])
    more = " and more" if len(active_codes) > MAX_LISTED_SERVICES else ""
    return f"no meter that is not archived has the code {excerpt(code)!r}; the services are: {listed}{more}"


def fingerprint(item: UsageInput, units: Decimal, price: Decimal | None, event_id: str) -> str:
    """sha256 over the event's canonical content: the same event sent again has the same one.

    The event time is the one sent (None when omitted, not the time of receipt, which differs on
    a retry); numbers are normalised (`1.50` and `1.5` are one event); properties are sorted.
    Every part is written with its length in front, so no two contents share a text. Stored with
    each event id: changing this function makes every stored event look changed to a retry, so
    it is pinned by a test (tests/unit/test_usage_rules.py)."""
    properties = item.properties
    units_text = format(units.normalize(), "f")
    price_text = "" if price is None else "=" + format(price.normalize(), "f")
    time_text = "" if item.event_time is None else "=" + item.event_time.isoformat()
    count = str(len(properties))
    # The parts in order, each as `<length>:<text>`, written in one f-string (the hot path).
    canonical = (
        f"{len(item.account_id)}:{item.account_id}{len(item.service)}:{item.service}"
        f"{len(units_text)}:{units_text}{len(price_text)}:{price_text}{len(time_text)}:{time_text}"
        f"{len(count)}:{count}"
    )
    if properties:
        canonical += "".join([f"{len(part)}:{part}" for pair in sorted(properties.items()) for part in pair])
    canonical += f"{len(event_id)}:{event_id}"
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_event(
    item: UsageInput,
    meters: Mapping[str, Meter],
    active_codes: Sequence[str],
    now: datetime,
    window: Window,
) -> CheckedEvent:
    """The event, checked; raises InvalidArgument naming every bad field. `meters` holds (by code)
    the meters the batch names, archived ones included; `active_codes` the codes there are, for
    the message (only read when the service is unknown)."""
    violations = Violations()
    if not item.account_id:
        violations.add("account_id", "is required")
    meter = meters.get(item.service)
    if not item.service:
        violations.add("usage_record.service", "is required")
    elif meter is None or meter.is_archived:
        violations.add("usage_record.service", unknown_service(item.service, active_codes))
        meter = None
    units = _decimal(item.units, "usage_record.units_consumed", violations, required=True)
    if units is not None and units < 0 and meter is not None and meter.aggregation not in NEGATIVE_ALLOWED:
        violations.add(
            "usage_record.units_consumed",
            f"is negative, which only SUM and WEIGHTED_SUM meters accept; {meter.code!r} is "
            f"{meter.aggregation.value.upper()}",
        )
    price = _decimal(item.price_per_unit, "usage_record.price_per_unit", violations, required=False)
    if price is not None and price < 0:
        violations.add("usage_record.price_per_unit", "must not be negative")
    event_time = check_event_time(item.event_time, now, window, violations)
    _check_properties(item.properties, violations)
    event_id, assigned = _event_id(item, violations)
    violations.raise_if_any()
    assert meter is not None  # else a violation was raised
    assert units is not None
    return CheckedEvent(
        account_id=item.account_id,
        meter=meter,
        units=units,
        price_per_unit=price,
        event_time=event_time,
        properties=item.properties,
        event_id=event_id,
        event_id_assigned=assigned,
        fingerprint=fingerprint(item, units, price, event_id),
    )


def batch_size(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidArgument.field("requests", "is required: send 1 to 1000 events")
    if count > limit:
        raise InvalidArgument.field("requests", f"has {count} events; at most {limit} are allowed per call")

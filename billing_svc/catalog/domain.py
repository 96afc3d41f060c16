"""The catalog as the business sees it: meters and plan versions. No I/O; the rules are in rules.py.

Meters say what can be metered and how a period's usage becomes one quantity. A plan version
holds everything a subscription is billed by: its terms (interval, trial, fees, metered charges,
spend bounds) never change once a subscription uses it, so changing them then makes a new
version (see plan_use_cases). Plan terms are stored as JSON (`terms_to_json`), in which every
amount is a decimal string: no JSON number, and so no float, ever holds a price.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from billing_svc.catalog.pricing import Graduated, Package, Percentage, PerUnit, PricingModel, Tier, Volume
from core.money import Money

# Column widths (billing_svc/catalog/tables.py declares its columns with these): checked before any
# query, so no database ever sees a longer value.
MAX_CODE = 64
MAX_DISPLAY_NAME = 200
MAX_UNIT_LABEL = 40
MAX_DESCRIPTION = 2000

METER_PREFIX = "mtr"
PLAN_PREFIX = "plan"
# Meter codes, meter properties, plan codes and feature codes: a lower-case letter, then
# lower-case letters, digits, `_`, `-` or `.`; 1 to 64 characters. ASCII only ([a-z], not \w).
CODE_REGEX = f"^[a-z][a-z0-9_.-]{{0,{MAX_CODE - 1}}}$"


def etag_of(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:20]


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- meters --------------------------------------------------------------------------------------


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MAX = "max"
    UNIQUE_COUNT = "unique_count"
    LATEST = "latest"
    WEIGHTED_SUM = "weighted_sum"


METER_UPDATABLE = ("display_name", "unit_label")
METER_IMMUTABLE = ("code", "aggregation", "property")
METER_OUTPUT_ONLY = ("id", "create_time", "update_time", "archive_time", "etag")


@dataclass(frozen=True)
class MeterFields:
    """What a caller sets on a meter (create, or the masked part of an update)."""

    code: str = ""
    display_name: str = ""
    unit_label: str = ""
    aggregation: Aggregation | None = None
    property: str = ""


@dataclass(frozen=True)
class Meter:
    id: str
    code: str
    display_name: str
    unit_label: str
    aggregation: Aggregation
    property: str  # the event property counted by UNIQUE_COUNT; "" otherwise
    create_time: datetime
    update_time: datetime
    archive_time: datetime | None
    revision: int

    # builtins.property: the field `property` shadows the builtin inside this class.
    @builtins.property
    def etag(self) -> str:
        return etag_of(self.id, self.revision)

    @builtins.property
    def is_archived(self) -> bool:
        return self.archive_time is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("create_time", "update_time", "archive_time"):
            data[name] = _time(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Meter:
        return cls(
            id=data["id"],
            code=data["code"],
            display_name=data["display_name"],
            unit_label=data["unit_label"],
            aggregation=Aggregation(data["aggregation"]),
            property=data["property"],
            create_time=datetime.fromisoformat(data["create_time"]),
            update_time=datetime.fromisoformat(data["update_time"]),
            archive_time=_parse_time(data["archive_time"]),
            revision=int(data["revision"]),
        )


# --- plans ---------------------------------------------------------------------------------------


class IntervalUnit(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


# The longest billing interval: three years in any unit (Stripe's limit, which billers know:
# https://docs.stripe.com/api/prices/create#create_price-recurring-interval_count).
MAX_INTERVAL_COUNT = {
    IntervalUnit.DAY: 1095,
    IntervalUnit.WEEK: 156,
    IntervalUnit.MONTH: 36,
    IntervalUnit.YEAR: 3,
}
MAX_TRIAL_DAYS = 730
MAX_METERED_CHARGES = 50
MAX_FEATURES = 100
TERMS_FORMAT = 1  # plan_versions.terms["format"]: bump it, and read the old one, when the shape changes

PRICE_KINDS: dict[type, str] = {
    PerUnit: "per_unit",
    Graduated: "graduated",
    Volume: "volume",
    Package: "package",
    Percentage: "percentage",
}


@dataclass(frozen=True)
class BillingInterval:
    unit: IntervalUnit
    count: int


@dataclass(frozen=True)
class Feature:
    code: str
    display_name: str
    enabled: bool | None  # a flag, or
    limit: int | None  # a numeric limit: exactly one of the two is set


@dataclass(frozen=True)
class SeatPrice:
    description: str
    price: PricingModel  # not Percentage


@dataclass(frozen=True)
class MeteredCharge:
    meter_id: str
    description: str
    price: PricingModel


@dataclass(frozen=True)
class PlanTerms:
    """Everything a subscription is billed by: fixed once a subscription uses its version."""

    interval: BillingInterval
    trial_days: int
    base_fee: Money | None
    seat_price: SeatPrice | None
    metered_charges: tuple[MeteredCharge, ...]
    minimum_spend: Money | None
    maximum_spend: Money | None
    requires_payment: bool


@dataclass(frozen=True)
class PlanVersion:
    """A plan at one version: the plan's names and archive mark, and this version's terms.

    `create_time` is the plan's; `update_time` is when this version last changed (every change
    made in place, names and archiving included, stamps the latest version); `revision` is the
    plan's, raised by every change to it.
    """

    plan_id: str
    version: int
    code: str
    display_name: str
    description: str
    currency_code: str
    terms: PlanTerms
    features: tuple[Feature, ...]
    in_use: bool
    create_time: datetime
    update_time: datetime
    archive_time: datetime | None
    revision: int

    @property
    def etag(self) -> str:
        # The version is part of it: an etag read from an older version never matches the latest.
        return etag_of(self.plan_id, self.version, self.revision)

    @property
    def is_archived(self) -> bool:
        return self.archive_time is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "version": self.version,
            "code": self.code,
            "display_name": self.display_name,
            "description": self.description,
            "currency_code": self.currency_code,
            "terms": terms_to_json(self.terms),
            "features": [asdict(feature) for feature in self.features],
            "in_use": self.in_use,
            "create_time": _time(self.create_time),
            "update_time": _time(self.update_time),
            "archive_time": _time(self.archive_time),
            "revision": self.revision,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanVersion:
        return cls(
            plan_id=data["plan_id"],
            version=int(data["version"]),
            code=data["code"],
            display_name=data["display_name"],
            description=data["description"],
            currency_code=data["currency_code"],
            terms=terms_from_json(data["terms"]),
            features=tuple(Feature(**feature) for feature in data["features"]),
            in_use=bool(data["in_use"]),
            create_time=datetime.fromisoformat(data["create_time"]),
            update_time=datetime.fromisoformat(data["update_time"]),
            archive_time=_parse_time(data["archive_time"]),
            revision=int(data["revision"]),
        )


# The fields of a plan as the API names them (Plan in plan.proto), and where each lives.
PLAN_NAMES = ("display_name", "description")  # on the plan, shared by its versions
TERMS_FIELDS = (
    "billing_interval",
    "trial_days",
    "base_fee",
    "seat_price",
    "metered_charges",
    "minimum_spend",
    "maximum_spend",
    "requires_payment",
)
PLAN_UPDATABLE = (*PLAN_NAMES, "features", *TERMS_FIELDS)
PLAN_IMMUTABLE = ("code", "currency_code")
PLAN_OUTPUT_ONLY = ("id", "version", "create_time", "update_time", "archive_time", "etag")


@dataclass(frozen=True)
class PlanFields:
    """What a caller sets on a plan (create, or the masked part of an update). An unset
    billing_interval is None, which only the rules below refuse."""

    code: str = ""
    display_name: str = ""
    description: str = ""
    currency_code: str = ""
    billing_interval: BillingInterval | None = None
    trial_days: int = 0
    base_fee: Money | None = None
    seat_price: SeatPrice | None = None
    metered_charges: tuple[MeteredCharge, ...] = ()
    minimum_spend: Money | None = None
    maximum_spend: Money | None = None
    requires_payment: bool = False
    features: tuple[Feature, ...] = ()

    def price_models(self) -> tuple[str, ...]:
        """The model of every price, in order. A command's fingerprint needs them: asdict() drops
        class names, and Graduated and Volume have the same fields."""
        prices = [self.seat_price.price] if self.seat_price else []
        prices += [charge.price for charge in self.metered_charges]
        return tuple(PRICE_KINDS[type(price)] for price in prices)


def apply_terms(terms: PlanTerms | None, fields: PlanFields, names: Iterable[str]) -> PlanTerms:
    """`terms` with the named terms fields of `fields` (all of them for a new plan, terms None)."""
    named = set(names) if terms is not None else set(TERMS_FIELDS)
    interval = fields.billing_interval if "billing_interval" in named else None
    changes = {
        name: getattr(fields, name) for name in TERMS_FIELDS if name in named and name != "billing_interval"
    }
    if terms is None:
        assert interval is not None, "check_plan refuses a plan without a billing interval"
        return PlanTerms(interval=interval, **changes)
    return replace(terms, **changes) if interval is None else replace(terms, interval=interval, **changes)


# --- terms as JSON (plan_versions.terms) -----------------------------------------------------------
# Every amount is a decimal string (prices as written, scale kept; minor units as digits) and
# never a JSON number, so no JSON reader, in Python or elsewhere, turns a price into a float.


def _number(value: Decimal) -> str:
    return format(value, "f")


def _optional_number(value: Decimal | None) -> str | None:
    return None if value is None else _number(value)


def _read_number(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _money_json(money: Money | None) -> dict[str, str] | None:
    return (
        None
        if money is None
        else {"currency_code": money.currency_code, "amount_minor": str(money.amount_minor)}
    )


def _money_from_json(data: Mapping[str, str] | None) -> Money | None:
    return None if data is None else Money(data["currency_code"], int(data["amount_minor"]))


def _tiers_json(tiers: tuple[Tier, ...]) -> list[dict[str, str | None]]:
    return [
        {
            "up_to": _optional_number(t.up_to),
            "unit_price": _number(t.unit_price),
            "flat_fee": _number(t.flat_fee),
        }
        for t in tiers
    ]


def price_to_json(price: PricingModel) -> dict[str, Any]:
    """{kind: parameters}, the kind named as in the Price message's oneof."""
    body: dict[str, Any]
    if isinstance(price, PerUnit):
        body = {"unit_price": _number(price.unit_price)}
    elif isinstance(price, Graduated | Volume):
        body = {"tiers": _tiers_json(price.tiers)}
    elif isinstance(price, Package):
        body = {
            "size": _number(price.size),
            "price": _number(price.price),
            "free_units": _number(price.free_units),
        }
    else:
        body = {
            "rate": _number(price.rate),
            "fixed_fee": _number(price.fixed_fee),
            "free_events": str(price.free_events),
            "free_amount": _number(price.free_amount),
            "min_per_event": _optional_number(price.min_per_event),
            "max_per_event": _optional_number(price.max_per_event),
        }
    return {PRICE_KINDS[type(price)]: body}


def price_from_json(data: Mapping[str, Any]) -> PricingModel:
    ((kind, body),) = data.items()
    if kind == "per_unit":
        return PerUnit(Decimal(body["unit_price"]))
    if kind in ("graduated", "volume"):
        tiers = tuple(
            Tier(_read_number(t["up_to"]), Decimal(t["unit_price"]), Decimal(t["flat_fee"]))
            for t in body["tiers"]
        )
        return Graduated(tiers) if kind == "graduated" else Volume(tiers)
    if kind == "package":
        return Package(Decimal(body["size"]), Decimal(body["price"]), Decimal(body["free_units"]))
    if kind == "percentage":
        return Percentage(
            rate=Decimal(body["rate"]),
            fixed_fee=Decimal(body["fixed_fee"]),
            free_events=int(body["free_events"]),
            free_amount=Decimal(body["free_amount"]),
            min_per_event=_read_number(body["min_per_event"]),
            max_per_event=_read_number(body["max_per_event"]),
        )
    raise ValueError(f"unknown price kind {kind!r} in stored terms")


def terms_to_json(terms: PlanTerms) -> dict[str, Any]:
    seat = terms.seat_price
    return {
        "format": TERMS_FORMAT,
        "interval": {"unit": terms.interval.unit.value, "count": terms.interval.count},
        "trial_days": terms.trial_days,
        "base_fee": _money_json(terms.base_fee),
        "seat_price": None
        if seat is None
        else {"description": seat.description, "price": price_to_json(seat.price)},
        "metered_charges": [
            {"meter_id": c.meter_id, "description": c.description, "price": price_to_json(c.price)}
            for c in terms.metered_charges
        ],
        "minimum_spend": _money_json(terms.minimum_spend),
        "maximum_spend": _money_json(terms.maximum_spend),
        "requires_payment": terms.requires_payment,
    }


def terms_from_json(data: Mapping[str, Any]) -> PlanTerms:
    if data.get("format") != TERMS_FORMAT:
        raise ValueError(f"stored plan terms have format {data.get('format')!r}, not {TERMS_FORMAT}")
    seat = data["seat_price"]
    return PlanTerms(
        interval=BillingInterval(IntervalUnit(data["interval"]["unit"]), int(data["interval"]["count"])),
        trial_days=int(data["trial_days"]),
        base_fee=_money_from_json(data["base_fee"]),
        seat_price=None if seat is None else SeatPrice(seat["description"], price_from_json(seat["price"])),
        metered_charges=tuple(
            MeteredCharge(c["meter_id"], c["description"], price_from_json(c["price"]))
            for c in data["metered_charges"]
        ),
        minimum_spend=_money_from_json(data["minimum_spend"]),
        maximum_spend=_money_from_json(data["maximum_spend"]),
        requires_payment=bool(data["requires_payment"]),
    )

"""The billing catalog's rules: meters and plans (billing_svc/catalog/rules.py, plan_proto.py)."""

from __future__ import annotations

from collections.abc import Callable

from billing_svc.catalog import domain as catalog
from billing_svc.catalog import pricing
from core import currencies
from core.money import MAX_UNIT_PRICE_PLACES
from gateway.constraints.common import NAME, NO_CONTROL, UNSIGNED_INT64, both, id_pattern
from gateway.schemas import JSON, enum_forms
from tally.billing.v1 import meter_pb2
from tally.subscription.v1 import plan_pb2

_METER = "tally.billing.v1.Meter"
_PLAN = "tally.subscription.v1.Plan"
_SUB = "tally.subscription.v1"
_CODE: JSON = {"pattern": catalog.CODE_REGEX}  # rules.check_code (the pattern bounds the length)
# Immutable fields in a PATCH body: the server accepts them only unchanged (an echo of the
# resource), which no schema can state, so the document asks for them to be left out.
_NOT_IN_UPDATE: JSON = {"update": {"replace": {"not": {}}}}
_DESCRIPTION: JSON = {"maxLength": catalog.MAX_DISPLAY_NAME, "pattern": NO_CONTROL}
# core.money.parse_unit_price: ASCII digits, an optional point and 1 to 12 digits, an optional
# "+", below 10^18 (at most 18 digits once leading zeros are gone), no sign, exponent or space.
DECIMAL_TEXT = f"\\+?0*[0-9]{{1,18}}(\\.[0-9]{{1,{MAX_UNIT_PRICE_PLACES}}})?"
_ZERO_TEXT = "^\\+?0+(\\.0+)?$"
# pricing.validate: a percentage rate from 0 to 100.
_RATE_TEXT = (
    f"^\\+?0*(100(\\.0{{1,{MAX_UNIT_PRICE_PLACES}}})?|[0-9]{{1,2}}(\\.[0-9]{{1,{MAX_UNIT_PRICE_PLACES}}})?)$"
)


def decimal_field(*, required: bool, pattern: str = f"^{DECIMAL_TEXT}$") -> JSON:
    """A google.type.Decimal field: required ones need a value (plan_proto._Decoder.decimal);
    an optional one may be left out, null, or have an empty value, all of which mean unset."""
    if required:
        return {"required": ["value"], "properties": {"value": {"type": "string", "pattern": pattern}}}
    return {"properties": {"value": {"pattern": f"^({pattern.strip('^$')})?$"}}}


_PLAN_MONEY: JSON = {  # rules._check_amount, and money_from_proto's currency
    "required": ["currencyCode"],
    "properties": {
        **both("currency_code", {"type": "string", "enum": sorted(currencies.EXPONENTS)}),
        **both("amount_minor", UNSIGNED_INT64),
    },
}


def _meter_properties(name: Callable[[str], str]) -> JSON:
    """rules.check_new_meter: a property for unique counts (required), for nothing else."""
    unique = ("AGGREGATION_UNIQUE_COUNT",)
    others = tuple(v.name for v in meter_pb2.Meter.Aggregation.DESCRIPTOR.values if v.number not in (0, 4))
    aggregation = meter_pb2.Meter.Aggregation.DESCRIPTOR
    return {
        "oneOf": [
            {
                "properties": {
                    name("aggregation"): {"enum": enum_forms(aggregation, unique)},
                    name("property"): {"type": "string", **_CODE},
                },
                "required": [name("property")],
            },
            {
                "properties": {
                    name("aggregation"): {"enum": enum_forms(aggregation, others)},
                    name("property"): {"enum": ["", None]},
                }
            },
        ]
    }


def _interval_counts(name: Callable[[str], str]) -> JSON:
    """rules._check_interval: at most three years in the unit (0 means 1)."""
    units = plan_pb2.BillingInterval.Unit.DESCRIPTOR
    return {
        "oneOf": [
            {
                "properties": {
                    name("unit"): {"enum": enum_forms(units, (f"UNIT_{unit.name}",))},
                    name("count"): {"maximum": most},
                }
            }
            for unit, most in catalog.MAX_INTERVAL_COUNT.items()
        ]
    }


def _one_price(name: Callable[[str], str]) -> JSON:
    """plan_proto._Decoder.price: exactly one model (null is unset)."""
    kinds = ("per_unit", "graduated", "volume", "package", "percentage")
    return {"oneOf": [{"required": [name(k)], "properties": {name(k): {"type": "object"}}} for k in kinds]}


def _one_value(name: Callable[[str], str]) -> JSON:
    """rules._check_features: a feature is a flag or a limit (0 or more), exactly one."""
    return {
        "oneOf": [
            {"required": [name("enabled")], "properties": {name("enabled"): {"type": "boolean"}}},
            {"required": [name("limit")], "properties": {name("limit"): UNSIGNED_INT64}},
        ]
    }


_TIERS: JSON = {"minItems": 1, "maxItems": pricing.MAX_TIERS}
CATALOG_FIELDS: dict[str, JSON] = {
    f"{_METER}.id": {"pattern": id_pattern(catalog.METER_PREFIX)},
    **{
        f"tally.billing.v1.{request}Request.id": {"pattern": id_pattern(catalog.METER_PREFIX)}
        for request in ("GetMeter", "ArchiveMeter")
    },
    f"{_METER}.code": {**_CODE, **_NOT_IN_UPDATE},
    f"{_METER}.display_name": {"maxLength": catalog.MAX_DISPLAY_NAME, "pattern": NAME},
    f"{_METER}.unit_label": {"maxLength": catalog.MAX_UNIT_LABEL, "pattern": NO_CONTROL},
    f"{_METER}.aggregation": _NOT_IN_UPDATE,
    f"{_METER}.property": _NOT_IN_UPDATE,
    f"{_PLAN}.id": {"pattern": id_pattern(catalog.PLAN_PREFIX)},
    **{
        f"{_SUB}.{request}Request.id": {"pattern": id_pattern(catalog.PLAN_PREFIX)}
        for request in ("GetPlan", "ArchivePlan")
    },
    f"{_SUB}.GetPlanRequest.version": {"minimum": 0},
    f"{_PLAN}.code": {**_CODE, **_NOT_IN_UPDATE},
    f"{_PLAN}.currency_code": {"enum": sorted(currencies.EXPONENTS), **_NOT_IN_UPDATE},
    f"{_PLAN}.display_name": {"maxLength": catalog.MAX_DISPLAY_NAME, "pattern": NAME},
    f"{_PLAN}.description": {"maxLength": catalog.MAX_DESCRIPTION, "pattern": NO_CONTROL},
    f"{_PLAN}.trial_days": {"minimum": 0, "maximum": catalog.MAX_TRIAL_DAYS},
    f"{_PLAN}.base_fee": _PLAN_MONEY,
    f"{_PLAN}.minimum_spend": _PLAN_MONEY,
    f"{_PLAN}.maximum_spend": _PLAN_MONEY,
    f"{_PLAN}.metered_charges": {"maxItems": catalog.MAX_METERED_CHARGES},
    f"{_PLAN}.features": {"maxItems": catalog.MAX_FEATURES},
    f"{_SUB}.BillingInterval.count": {"minimum": 0},
    f"{_SUB}.SeatPrice.description": _DESCRIPTION,
    f"{_SUB}.SeatPrice.price": {"properties": both("percentage", {"type": "null"})},  # metered only
    f"{_SUB}.MeteredCharge.meter_id": {"pattern": id_pattern(catalog.METER_PREFIX)},
    f"{_SUB}.MeteredCharge.description": _DESCRIPTION,
    f"{_SUB}.Feature.code": _CODE,
    f"{_SUB}.Feature.display_name": _DESCRIPTION,
    f"{_SUB}.Feature.enabled": {"nullable": False},
    f"{_SUB}.Feature.limit": {"nullable": False},
    f"{_SUB}.TieredPrice.tiers": _TIERS,
    f"{_SUB}.Tier.up_to": decimal_field(required=False),
    f"{_SUB}.Tier.unit_price": decimal_field(required=True),
    f"{_SUB}.Tier.flat_fee": decimal_field(required=False),
    f"{_SUB}.PerUnitPrice.unit_price": decimal_field(required=True),
    f"{_SUB}.PackagePrice.size": {
        **decimal_field(required=True),
        "not": decimal_field(required=True, pattern=_ZERO_TEXT),
    },
    f"{_SUB}.PackagePrice.price": decimal_field(required=True),
    f"{_SUB}.PackagePrice.free_units": decimal_field(required=False),
    f"{_SUB}.PercentagePrice.rate": decimal_field(required=True, pattern=_RATE_TEXT),
    f"{_SUB}.PercentagePrice.fixed_fee": decimal_field(required=False),
    f"{_SUB}.PercentagePrice.free_events": {"pattern": UNSIGNED_INT64["pattern"]},
    f"{_SUB}.PercentagePrice.free_amount": decimal_field(required=False),
    f"{_SUB}.PercentagePrice.min_per_event": decimal_field(required=False),
    f"{_SUB}.PercentagePrice.max_per_event": decimal_field(required=False),
}
CATALOG_MESSAGES = {
    _METER: {"create": _meter_properties},
    f"{_SUB}.BillingInterval": {"all": _interval_counts},
    f"{_SUB}.Price": {"all": _one_price},
    f"{_SUB}.Feature": {"all": _one_value},
}

"""Plans on the wire: tally.subscription.v1.Plan to PlanFields, and PlanVersion back to Plan.

Decoding refuses only what cannot be represented (a decimal that does not parse, an unknown enum
value, a currency Tally does not bill in), naming every such field at once; the plan's rules
(rules.py) judge the rest. Decimals follow core.money_proto: an error in a decimal's text names
its `value`, as the JSON form does (`{"unitPrice": {"value": "1.5"}}`).
"""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal

from google.type import decimal_pb2

from billing_svc.catalog.domain import (
    BillingInterval,
    Feature,
    IntervalUnit,
    MeteredCharge,
    PlanFields,
    PlanVersion,
    SeatPrice,
)
from billing_svc.catalog.pricing import Graduated, Package, Percentage, PerUnit, PricingModel, Tier, Volume
from core.errors import InvalidArgument, Violations
from core.money import Money
from core.money_proto import decimal_from_proto, decimal_to_proto, money_from_proto, money_to_proto
from tally.subscription.v1 import plan_pb2
from tally.type.v1 import money_pb2

_UNIT_TO_PROTO = {
    IntervalUnit.DAY: plan_pb2.BillingInterval.UNIT_DAY,
    IntervalUnit.WEEK: plan_pb2.BillingInterval.UNIT_WEEK,
    IntervalUnit.MONTH: plan_pb2.BillingInterval.UNIT_MONTH,
    IntervalUnit.YEAR: plan_pb2.BillingInterval.UNIT_YEAR,
}
_UNIT_FROM_PROTO = {value: key for key, value in _UNIT_TO_PROTO.items()}
_ZERO = Decimal(0)


class _Decoder:
    """Collects what cannot be decoded, so that one error names every such field."""

    def __init__(self) -> None:
        self.violations = Violations()

    def decimal(self, holder: object, name: str, path: str, *, required: bool) -> Decimal | None:
        """`holder.name`, a google.type.Decimal: None when unset (or empty) and not required."""
        message: decimal_pb2.Decimal = getattr(holder, name)
        if not holder.HasField(name) or not message.value:  # type: ignore[attr-defined]
            if required:
                self.violations.add(f"{path}.{name}", "is required: a decimal string such as 12.50")
            return None
        try:
            return decimal_from_proto(message, field=f"{path}.{name}")
        except InvalidArgument as error:
            self.violations.items.extend(error.violations)
            return None

    def number(self, holder: object, name: str, path: str) -> Decimal:
        """A required decimal; 0 stands in for one that failed, until the error is raised."""
        value = self.decimal(holder, name, path, required=True)
        return _ZERO if value is None else value

    def optional_number(self, holder: object, name: str, path: str) -> Decimal:
        value = self.decimal(holder, name, path, required=False)
        return _ZERO if value is None else value

    def money(self, holder: object, name: str, path: str) -> Money | None:
        if not holder.HasField(name):  # type: ignore[attr-defined]
            return None
        message: money_pb2.Money = getattr(holder, name)
        try:
            return money_from_proto(message, field=path)
        except InvalidArgument as error:
            self.violations.items.extend(error.violations)
            return None

    def tiers(self, message: plan_pb2.TieredPrice, path: str) -> tuple[Tier, ...]:
        return tuple(
            Tier(
                up_to=self.decimal(tier, "up_to", f"{path}.tiers[{index}]", required=False),
                unit_price=self.number(tier, "unit_price", f"{path}.tiers[{index}]"),
                flat_fee=self.optional_number(tier, "flat_fee", f"{path}.tiers[{index}]"),
            )
            for index, tier in enumerate(message.tiers)
        )

    def price(self, message: plan_pb2.Price, path: str) -> PricingModel:
        kind = message.WhichOneof("model")
        if kind is None:
            self.violations.add(path, "is required: one of per_unit, graduated, volume, package, percentage")
            return PerUnit(_ZERO)  # stands in until the error is raised
        where = f"{path}.{kind}"
        if kind == "per_unit":
            return PerUnit(self.number(message.per_unit, "unit_price", where))
        if kind == "graduated":
            return Graduated(self.tiers(message.graduated, where))
        if kind == "volume":
            return Volume(self.tiers(message.volume, where))
        if kind == "package":
            package = message.package
            return Package(
                size=self.number(package, "size", where),
                price=self.number(package, "price", where),
                free_units=self.optional_number(package, "free_units", where),
            )
        percentage = message.percentage
        return Percentage(
            rate=self.number(percentage, "rate", where),
            fixed_fee=self.optional_number(percentage, "fixed_fee", where),
            free_events=percentage.free_events,
            free_amount=self.optional_number(percentage, "free_amount", where),
            min_per_event=self.decimal(percentage, "min_per_event", where, required=False),
            max_per_event=self.decimal(percentage, "max_per_event", where, required=False),
        )

    def interval(self, message: plan_pb2.Plan) -> BillingInterval | None:
        if not message.HasField("billing_interval"):
            return None
        interval = message.billing_interval
        if interval.unit == plan_pb2.BillingInterval.UNIT_UNSPECIFIED:
            return None
        if interval.unit not in _UNIT_FROM_PROTO:
            self.violations.add("plan.billing_interval.unit", f"unknown unit value {interval.unit}")
            return None
        return BillingInterval(_UNIT_FROM_PROTO[interval.unit], interval.count or 1)

    def seat_price(self, message: plan_pb2.Plan) -> SeatPrice | None:
        if not message.HasField("seat_price"):
            return None
        seat = message.seat_price
        return SeatPrice(seat.description, self.price(seat.price, "plan.seat_price.price"))

    def charges(self, message: plan_pb2.Plan) -> tuple[MeteredCharge, ...]:
        return tuple(
            MeteredCharge(
                meter_id=charge.meter_id,
                description=charge.description,
                price=self.price(charge.price, f"plan.metered_charges[{index}].price"),
            )
            for index, charge in enumerate(message.metered_charges)
        )


def _feature(message: plan_pb2.Feature) -> Feature:
    value = message.WhichOneof("value")
    return Feature(
        code=message.code,
        display_name=message.display_name,
        enabled=message.enabled if value == "enabled" else None,
        limit=message.limit if value == "limit" else None,
    )


def plan_fields_from_proto(message: plan_pb2.Plan, mask: Collection[str] | None = None) -> PlanFields:
    """The plan's fields; with `mask` (an update's paths), only the fields it names are read,
    the others left at their defaults: a field the update does not touch is not judged."""

    def wanted(name: str) -> bool:
        return mask is None or "*" in mask or name in mask

    decode = _Decoder()
    fields = PlanFields(
        code=message.code,
        display_name=message.display_name,
        description=message.description,
        currency_code=message.currency_code,
        billing_interval=decode.interval(message) if wanted("billing_interval") else None,
        trial_days=message.trial_days,
        base_fee=decode.money(message, "base_fee", "plan.base_fee") if wanted("base_fee") else None,
        seat_price=decode.seat_price(message) if wanted("seat_price") else None,
        metered_charges=decode.charges(message) if wanted("metered_charges") else (),
        minimum_spend=decode.money(message, "minimum_spend", "plan.minimum_spend")
        if wanted("minimum_spend")
        else None,
        maximum_spend=decode.money(message, "maximum_spend", "plan.maximum_spend")
        if wanted("maximum_spend")
        else None,
        requires_payment=message.requires_payment,
        features=tuple(_feature(feature) for feature in message.features) if wanted("features") else (),
    )
    decode.violations.raise_if_any()
    return fields


# --- encoding ------------------------------------------------------------------------------------


def _tiers_to_proto(tiers: tuple[Tier, ...]) -> plan_pb2.TieredPrice:
    message = plan_pb2.TieredPrice()
    for tier in tiers:
        entry = message.tiers.add(
            unit_price=decimal_to_proto(tier.unit_price), flat_fee=decimal_to_proto(tier.flat_fee)
        )
        if tier.up_to is not None:
            entry.up_to.CopyFrom(decimal_to_proto(tier.up_to))
    return message


def price_to_proto(price: PricingModel) -> plan_pb2.Price:
    if isinstance(price, PerUnit):
        return plan_pb2.Price(per_unit=plan_pb2.PerUnitPrice(unit_price=decimal_to_proto(price.unit_price)))
    if isinstance(price, Graduated):
        return plan_pb2.Price(graduated=_tiers_to_proto(price.tiers))
    if isinstance(price, Volume):
        return plan_pb2.Price(volume=_tiers_to_proto(price.tiers))
    if isinstance(price, Package):
        return plan_pb2.Price(
            package=plan_pb2.PackagePrice(
                size=decimal_to_proto(price.size),
                price=decimal_to_proto(price.price),
                free_units=decimal_to_proto(price.free_units),
            )
        )
    percentage = plan_pb2.PercentagePrice(
        rate=decimal_to_proto(price.rate),
        fixed_fee=decimal_to_proto(price.fixed_fee),
        free_events=price.free_events,
        free_amount=decimal_to_proto(price.free_amount),
    )
    if price.min_per_event is not None:
        percentage.min_per_event.CopyFrom(decimal_to_proto(price.min_per_event))
    if price.max_per_event is not None:
        percentage.max_per_event.CopyFrom(decimal_to_proto(price.max_per_event))
    return plan_pb2.Price(percentage=percentage)


def _feature_to_proto(feature: Feature) -> plan_pb2.Feature:
    message = plan_pb2.Feature(code=feature.code, display_name=feature.display_name)
    if feature.limit is not None:
        message.limit = feature.limit
    else:
        message.enabled = bool(feature.enabled)
    return message


def plan_to_proto(plan: PlanVersion) -> plan_pb2.Plan:
    terms = plan.terms
    message = plan_pb2.Plan(
        id=plan.plan_id,
        version=plan.version,
        code=plan.code,
        display_name=plan.display_name,
        description=plan.description,
        currency_code=plan.currency_code,
        billing_interval=plan_pb2.BillingInterval(
            unit=_UNIT_TO_PROTO[terms.interval.unit], count=terms.interval.count
        ),
        trial_days=terms.trial_days,
        metered_charges=[
            plan_pb2.MeteredCharge(
                meter_id=charge.meter_id, description=charge.description, price=price_to_proto(charge.price)
            )
            for charge in terms.metered_charges
        ],
        features=[_feature_to_proto(feature) for feature in plan.features],
        requires_payment=terms.requires_payment,
        etag=plan.etag,
    )
    for name in ("base_fee", "minimum_spend", "maximum_spend"):
        money = getattr(terms, name)
        if money is not None:
            getattr(message, name).CopyFrom(money_to_proto(money))
    if terms.seat_price is not None:
        message.seat_price.CopyFrom(
            plan_pb2.SeatPrice(
                description=terms.seat_price.description, price=price_to_proto(terms.seat_price.price)
            )
        )
    message.create_time.FromDatetime(plan.create_time)
    message.update_time.FromDatetime(plan.update_time)
    if plan.archive_time is not None:
        message.archive_time.FromDatetime(plan.archive_time)
    return message

"""The catalog's validation rules: what a meter or a plan may hold. Pure, like the domain: each
check raises one InvalidArgument naming every bad field by its path in the request
(`plan.metered_charges[1].price.graduated.tiers[0].up_to`), as google.rpc.BadRequest wants it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from billing_svc.catalog import pricing
from billing_svc.catalog.domain import (
    CODE_REGEX,
    MAX_CODE,
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    MAX_FEATURES,
    MAX_INTERVAL_COUNT,
    MAX_METERED_CHARGES,
    MAX_TRIAL_DAYS,
    MAX_UNIT_LABEL,
    METER_UPDATABLE,
    PLAN_UPDATABLE,
    PRICE_KINDS,
    Aggregation,
    MeterFields,
    PlanFields,
    PlanTerms,
    apply_terms,
)
from billing_svc.catalog.pricing import Percentage, PricingModel
from core import currencies
from core.errors import InvalidArgument, Violations
from core.money import Money
from core.text import excerpt, invisible_problem, text_problem

_CODE = re.compile(CODE_REGEX)

# --- text rules ----------------------------------------------------------------------------------


def check_text(
    violations: Violations, path: str, value: str, limit: int, *, required: bool = False, name: bool = False
) -> None:
    """Length, then the text policy; `name` adds the rule for text people compare by eye."""
    if required and not value.strip():
        violations.add(path, "is required")
    elif len(value) > limit:
        violations.add(path, f"must be at most {limit} characters, got {len(value)}")
    elif problem := text_problem(value) or (invisible_problem(value) if name else None):
        violations.add(path, problem)


def check_code(violations: Violations, path: str, value: str) -> None:
    if not value:
        violations.add(path, "is required")
    elif not _CODE.fullmatch(value):
        violations.add(
            path,
            f"{excerpt(value)!r} must be 1 to {MAX_CODE} characters: a lower-case letter, then"
            " lower-case letters, digits, '_', '-' or '.'",
        )


def check_mask(
    paths: Iterable[str],
    *,
    updatable: tuple[str, ...],
    immutable: tuple[str, ...],
    output_only: tuple[str, ...],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An update mask resolved to (updatable fields, immutable fields named); `*` means every
    updatable field. Immutable fields may be named (a client sending its resource back whole)
    as long as their value does not change, which the use case checks against the stored one."""
    violations = Violations()
    resolved: list[str] = []
    named_immutable: list[str] = []
    for path in paths:
        if path == "*":
            resolved.extend(updatable)
        elif path in updatable:
            resolved.append(path)
        elif path in immutable:
            named_immutable.append(path)
        elif path in output_only:
            violations.add("update_mask", f"{path!r} is output only and cannot be updated")
        elif path.split(".", 1)[0] in updatable:
            violations.add(
                "update_mask", f"{excerpt(path)!r}: {path.split('.', 1)[0]} is replaced as a whole"
            )
        else:
            violations.add(
                "update_mask", f"unknown field {excerpt(path)!r}; updatable: {', '.join(updatable)}"
            )
    violations.raise_if_any()
    return tuple(dict.fromkeys(resolved)), tuple(dict.fromkeys(named_immutable))


def immutable_changed(path: str) -> InvalidArgument:
    return InvalidArgument.field(path, "cannot change once created", reason="FIELD_IMMUTABLE")


# --- meters ---------------------------------------------------------------------------------------


def check_new_meter(fields: MeterFields, *, prefix: str = "meter") -> None:
    """Every rule of a meter to create, raising one InvalidArgument naming every bad field."""
    violations = Violations()
    check_code(violations, f"{prefix}.code", fields.code)
    _check_meter_names(violations, fields, METER_UPDATABLE, prefix)
    if fields.aggregation is None:
        violations.add(f"{prefix}.aggregation", "is required")
    elif fields.aggregation is Aggregation.UNIQUE_COUNT:
        check_code(violations, f"{prefix}.property", fields.property)
    elif fields.property:
        violations.add(f"{prefix}.property", "is only for AGGREGATION_UNIQUE_COUNT; leave it empty")
    violations.raise_if_any()


def check_meter_update(fields: MeterFields, names: Iterable[str], *, prefix: str = "meter") -> None:
    violations = Violations()
    _check_meter_names(violations, fields, names, prefix)
    violations.raise_if_any()


def _check_meter_names(
    violations: Violations, fields: MeterFields, names: Iterable[str], prefix: str
) -> None:
    for name in names:
        if name == "display_name":
            check_text(
                violations,
                f"{prefix}.display_name",
                fields.display_name,
                MAX_DISPLAY_NAME,
                required=True,
                name=True,
            )
        elif name == "unit_label":
            check_text(violations, f"{prefix}.unit_label", fields.unit_label, MAX_UNIT_LABEL)


# --- plans ---------------------------------------------------------------------------------------


def check_new_plan(fields: PlanFields) -> None:
    """Every rule of a plan to create but the ones about its meters (plan_use_cases checks those)."""
    violations = Violations()
    check_code(violations, "plan.code", fields.code)
    known_currency = _check_currency(violations, "plan.currency_code", fields.currency_code)
    _check_plan_fields(violations, fields, PLAN_UPDATABLE)
    violations.raise_if_any()
    if known_currency:
        check_terms(apply_terms(None, fields, ()), fields.currency_code)


def check_plan_update(fields: PlanFields, names: Iterable[str]) -> None:
    """The rules of the named fields that need nothing stored; `check_terms` follows on the result."""
    violations = Violations()
    _check_plan_fields(violations, fields, names)
    violations.raise_if_any()


def check_terms(terms: PlanTerms, currency_code: str) -> None:
    """Rules across fields: every amount in the plan's currency, minimum spend <= maximum spend."""
    violations = Violations()
    amounts = (
        ("plan.base_fee", terms.base_fee),
        ("plan.minimum_spend", terms.minimum_spend),
        ("plan.maximum_spend", terms.maximum_spend),
    )
    for path, money in amounts:
        if money is not None and money.currency_code != currency_code:
            violations.add(
                f"{path}.currency_code",
                f"must be the plan's currency {currency_code}, not {money.currency_code}",
            )
    low, high = terms.minimum_spend, terms.maximum_spend
    if not violations.items and low is not None and high is not None and low > high:
        violations.add("plan.maximum_spend", f"must be at least minimum_spend ({low})")
    violations.raise_if_any()


def _check_currency(violations: Violations, path: str, code: str) -> bool:
    if not code:
        violations.add(path, "is required")
    elif not currencies.is_known(code):
        violations.add(path, f"{excerpt(code)!r} is not an ISO 4217 currency code Tally bills in (e.g. USD)")
    else:
        return True
    return False


def _check_plan_fields(violations: Violations, fields: PlanFields, names: Iterable[str]) -> None:
    for name in names:
        path = f"plan.{name}"
        if name == "display_name":
            check_text(violations, path, fields.display_name, MAX_DISPLAY_NAME, required=True, name=True)
        elif name == "description":
            check_text(violations, path, fields.description, MAX_DESCRIPTION)
        elif name == "billing_interval":
            _check_interval(violations, fields)
        elif name == "trial_days" and not 0 <= fields.trial_days <= MAX_TRIAL_DAYS:
            violations.add(path, f"must be from 0 to {MAX_TRIAL_DAYS} days")
        elif name in ("base_fee", "minimum_spend", "maximum_spend"):
            _check_amount(violations, path, getattr(fields, name))
        elif name == "seat_price" and fields.seat_price is not None:
            check_text(violations, f"{path}.description", fields.seat_price.description, MAX_DISPLAY_NAME)
            _check_price(violations, f"{path}.price", fields.seat_price.price, metered=False)
        elif name == "metered_charges":
            _check_charges(violations, fields)
        elif name == "features":
            _check_features(violations, fields)


def _check_interval(violations: Violations, fields: PlanFields) -> None:
    interval = fields.billing_interval
    if interval is None:
        violations.add(
            "plan.billing_interval.unit", "is required: UNIT_DAY, UNIT_WEEK, UNIT_MONTH or UNIT_YEAR"
        )
        return
    most = MAX_INTERVAL_COUNT[interval.unit]
    if not 1 <= interval.count <= most:
        violations.add(
            "plan.billing_interval.count",
            f"must be from 1 to {most} for unit {interval.unit.value} (0 means 1)",
        )


def _check_amount(violations: Violations, path: str, money: Money | None) -> None:
    if money is not None and money.amount_minor < 0:
        violations.add(f"{path}.amount_minor", "must not be negative")


def _check_price(violations: Violations, path: str, price: PricingModel, *, metered: bool) -> None:
    kind = PRICE_KINDS[type(price)]
    if isinstance(price, Percentage) and not metered:
        violations.add(f"{path}.{kind}", "is only for metered charges")
        return
    try:
        pricing.validate(price, field=f"{path}.{kind}")
    except InvalidArgument as error:
        violations.items.extend(error.violations)


def _check_charges(violations: Violations, fields: PlanFields) -> None:
    charges = fields.metered_charges
    if len(charges) > MAX_METERED_CHARGES:
        violations.add(
            "plan.metered_charges", f"must have at most {MAX_METERED_CHARGES} charges, got {len(charges)}"
        )
        return
    first: dict[str, int] = {}
    for index, charge in enumerate(charges):
        path = f"plan.metered_charges[{index}]"
        if not charge.meter_id:
            violations.add(f"{path}.meter_id", "is required")
        elif charge.meter_id in first:
            violations.add(
                f"{path}.meter_id", f"is already charged for by metered_charges[{first[charge.meter_id]}]"
            )
        else:
            first[charge.meter_id] = index
        check_text(violations, f"{path}.description", charge.description, MAX_DISPLAY_NAME)
        _check_price(violations, f"{path}.price", charge.price, metered=True)


def _check_features(violations: Violations, fields: PlanFields) -> None:
    features = fields.features
    if len(features) > MAX_FEATURES:
        violations.add("plan.features", f"must have at most {MAX_FEATURES} features, got {len(features)}")
        return
    seen = Counter(feature.code for feature in features)
    for index, feature in enumerate(features):
        path = f"plan.features[{index}]"
        check_code(violations, f"{path}.code", feature.code)
        if feature.code and seen[feature.code] > 1:
            violations.add(f"{path}.code", f"{excerpt(feature.code)!r} appears more than once")
        check_text(violations, f"{path}.display_name", feature.display_name, MAX_DISPLAY_NAME)
        if (feature.enabled is None) == (feature.limit is None):
            violations.add(path, "needs exactly one value: enabled or limit")
        elif feature.limit is not None and feature.limit < 0:
            violations.add(f"{path}.limit", "must not be negative")


def percentage_meter_problem(aggregation: Aggregation) -> str | None:
    """A percentage prices each event's units as an amount: only a summing meter records those."""
    if aggregation is Aggregation.SUM:
        return None
    return f"needs a meter with AGGREGATION_SUM (the events' amounts), not AGGREGATION_{aggregation.name}"

"""Pricing models: what a quantity of usage, or a list of transactions, costs. Pure: no I/O.

Every number is a `decimal.Decimal` in major currency units (12.50 is twelve dollars fifty),
computed in core.money.DECIMAL_CONTEXT, which traps Inexact: nothing here rounds or divides
inexactly, so a result is either exact or an exception (decimal.Inexact only if a result
would need more than the context's 40 significant digits). Floats, ints and bools are
refused with TypeError wherever a Decimal belongs; `Percentage.free_events` is the one int.

Tally's rules (tests/unit/test_pricing.py pins each with a test of the same topic):

Tiers (`Graduated`, `Volume`)
  * A tier's `up_to` is inclusive. Tier 0 covers [0, up_to[0]]; tier i covers
    (up_to[i-1], up_to[i]]; the last tier has no `up_to` and covers everything above. A
    decimal quantity falls in the tier whose bounds contain it, with no integer gaps: with
    tiers up to 10 and up to 20, 10 is in tier 0 and 10.5 in tier 1. Public docs that write
    integer ranges ("1-5, 6-10, 11+") mean up_to 5, 10, None here.
  * Graduated: each tier reached prices the units inside it (10.5 above is 10 units in tier 0
    and 0.5 in tier 1), plus its flat fee. Tier 0 is always reached, so its flat fee is billed
    at zero usage; a later tier's flat fee is billed once, as soon as usage is inside it
    (above the previous tier's up_to, not at it).
  * Volume: every unit at the unit price of the one tier containing the quantity, plus that
    tier's flat fee only. Zero usage is in tier 0, so tier 0's flat fee is billed at zero usage.
    Volume is not monotone: crossing into a cheaper tier can lower the amount.

Package: packages = ceil(max(quantity - free_units, 0) / size), amount = packages x price.
  Free units are subtracted first, a started package counts as a whole one, zero billable
  units cost 0. The ceiling is computed with an exact integer quotient and remainder.

Quantities: a negative or non-finite quantity is InvalidArgument naming the quantity field
  (`field=`, "quantity" by default). -0 is 0.

Rounding: none here. `amount_for` and `percentage_amount` return the exact amount of one
  invoice line (all its tiers, all its events); `line_minor_units` rounds that line once,
  half-up, with core.money.to_minor_units. Rounding each tier or event on its own and adding
  could differ from the line by a minor unit per part, so it is never done.

Percentage (after Lago's percentage charge model: rate, fixed_amount, free_units_per_events,
  free_units_per_total_aggregation, per_transaction_min/max_amount). Events are priced one by
  one, in the order given (the order they were recorded):
  1. The free allowance: the first `free_events` events and the first `free_amount` of the
     running sum of amounts; zero means "no such limit", and with both zero nothing is free.
     With both set the allowance ends at whichever runs out first. Event i (from 1), with
     running sum S_i, is free while (free_events == 0 or i <= free_events) and
     (free_amount == 0 or S_i <= free_amount): no rate, no fixed fee, no minimum.
  2. The first event past the allowance because it crosses `free_amount` (S_(i-1) <
     free_amount < S_i, while still inside `free_events`) has the uncovered part
     S_i - free_amount charged; an event past `free_events` is charged in full, whatever is
     left of `free_amount` is forfeited. This is how Lago's documentation reads its example
     (3 free events or $500, the fourth event of $50 costs 1.2% of $50 + $0.10 = $0.70 with
     only $400 used); Lago's code computes that example differently depending on whether
     min/max are set, and Tally follows the documented behaviour.
  3. A charged event's fee = charged amount x rate / 100 + fixed_fee, then bounded:
     raised to `min_per_event`, lowered to `max_per_event`. The bounds apply to the rate part
     and the fixed fee together, and only to charged events (a free event stays 0).
  4. The line's amount is the exact sum of the fees, rounded once like any other line.

Minimum and maximum spend (`bounded_total`): a total below the minimum is billed at the
  minimum with a positive true-up adjustment, a total above the maximum at the maximum with
  a negative adjustment; the adjustment is its own invoice line. Pass the total of the lines
  the bound covers, each already rounded, so that the adjustment line brings the invoice to
  the bound exactly.

Validation (`validate`, InvalidArgument naming every bad field under the `field` prefix):
  * every number in a model (up_to, prices, fees, sizes, free amounts, bounds): finite,
    not negative, below 10^18, at most 12 decimal places (core.money's unit price limits);
  * tiers: at least 1 and at most MAX_TIERS; every up_to but the last set and strictly
    greater than the one before (up_to[0] may be 0: a tier for zero usage alone); the last
    up_to unset, so that every quantity has a tier;
  * package size greater than 0; percentage rate from 0 to 100 inclusive; free_events not
    negative; min_per_event at most max_per_event (reported on max_per_event).
  The pricing functions refuse an invalid model with ValueError rather than InvalidArgument:
  a stored model that does not validate is Tally's fault, not the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, TypeAlias

from core.errors import InvalidArgument, Violations
from core.money import DECIMAL_CONTEXT, MAX_UNIT_PRICE_PLACES, UNIT_PRICE_LIMIT, to_minor_units

MAX_TIERS: Final = 100

_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_C: Final = DECIMAL_CONTEXT


def _require_decimal(value: object, what: str) -> None:
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be a Decimal, not {type(value).__name__}")


def _require_optional_decimal(value: object, what: str) -> None:
    if value is not None:
        _require_decimal(value, what)


@dataclass(frozen=True)
class Tier:
    """One tier: units up to and including `up_to` (None: unbounded, last tier only)."""

    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal = _ZERO

    def __post_init__(self) -> None:
        _require_optional_decimal(self.up_to, "Tier.up_to")
        _require_decimal(self.unit_price, "Tier.unit_price")
        _require_decimal(self.flat_fee, "Tier.flat_fee")


def _require_tiers(tiers: object, what: str) -> None:
    # A tuple keeps the frozen model immutable and hashable; a list would be neither.
    if not isinstance(tiers, tuple) or not all(isinstance(tier, Tier) for tier in tiers):
        raise TypeError(f"{what} must be a tuple of Tier")


@dataclass(frozen=True)
class PerUnit:
    unit_price: Decimal

    def __post_init__(self) -> None:
        _require_decimal(self.unit_price, "PerUnit.unit_price")


@dataclass(frozen=True)
class Graduated:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        _require_tiers(self.tiers, "Graduated.tiers")


@dataclass(frozen=True)
class Volume:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        _require_tiers(self.tiers, "Volume.tiers")


@dataclass(frozen=True)
class Package:
    size: Decimal
    price: Decimal
    free_units: Decimal = _ZERO

    def __post_init__(self) -> None:
        _require_decimal(self.size, "Package.size")
        _require_decimal(self.price, "Package.price")
        _require_decimal(self.free_units, "Package.free_units")


@dataclass(frozen=True)
class Percentage:
    """A percentage of each transaction plus a fixed fee per transaction (see the module doc)."""

    rate: Decimal  # percent: Decimal("2.9") is 2.9 %
    fixed_fee: Decimal = _ZERO
    free_events: int = 0
    free_amount: Decimal = _ZERO
    min_per_event: Decimal | None = None
    max_per_event: Decimal | None = None

    def __post_init__(self) -> None:
        _require_decimal(self.rate, "Percentage.rate")
        _require_decimal(self.fixed_fee, "Percentage.fixed_fee")
        if isinstance(self.free_events, bool) or not isinstance(self.free_events, int):
            raise TypeError(f"Percentage.free_events must be an int, not {type(self.free_events).__name__}")
        _require_decimal(self.free_amount, "Percentage.free_amount")
        _require_optional_decimal(self.min_per_event, "Percentage.min_per_event")
        _require_optional_decimal(self.max_per_event, "Percentage.max_per_event")


QuantityModel: TypeAlias = PerUnit | Graduated | Volume | Package
PricingModel: TypeAlias = PerUnit | Graduated | Volume | Package | Percentage


@dataclass(frozen=True)
class TierLine:
    """One part of a line's amount: amount = units x unit_price + flat_fee, exactly.

    `tier_index` is 0-based, as in `tiers[i]`. PerUnit and Package give one part with index 0;
    for Package, `units` counts the packages billed and `unit_price` is the package price.
    """

    tier_index: int
    units: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal


# ---------------------------------------------------------------- validation


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_number(violations: Violations, path: str, value: Decimal) -> bool:
    """The rule for every number in a model; True when `value` passes it."""
    if not value.is_finite():
        violations.add(path, "must be a finite number")
    elif value < 0:
        violations.add(path, "must not be negative")
    elif value >= UNIT_PRICE_LIMIT:
        violations.add(path, "must be less than 10^18")
    elif not _has_places(value, MAX_UNIT_PRICE_PLACES):
        violations.add(path, f"must have at most {MAX_UNIT_PRICE_PLACES} decimal places")
    else:
        return True
    return False


def _has_places(value: Decimal, places: int) -> bool:
    # By value, not as written: 1.5000000000000 has one decimal place.
    shifted = _C.scaleb(value, places)
    return shifted.to_integral_value() == shifted


def _check_tiers(violations: Violations, path: str, tiers: tuple[Tier, ...]) -> None:
    if not tiers:
        violations.add(path, "must have at least one tier")
        return
    if len(tiers) > MAX_TIERS:
        violations.add(path, f"must have at most {MAX_TIERS} tiers")
        return
    last = len(tiers) - 1
    previous: Decimal | None = None
    for index, tier in enumerate(tiers):
        up_to_path = f"{path}[{index}].up_to"
        if tier.up_to is None:
            if index != last:
                violations.add(up_to_path, "must be set: only the last tier is unbounded")
        elif index == last:
            violations.add(
                up_to_path, "must be unset: the last tier is unbounded, so every quantity has a tier"
            )
        elif _check_number(violations, up_to_path, tier.up_to):
            if previous is not None and tier.up_to <= previous:
                violations.add(up_to_path, f"must be greater than tiers[{index - 1}].up_to ({previous})")
            previous = tier.up_to
        _check_number(violations, f"{path}[{index}].unit_price", tier.unit_price)
        _check_number(violations, f"{path}[{index}].flat_fee", tier.flat_fee)


def _check_percentage(violations: Violations, field: str, model: Percentage) -> None:
    rate_path = _path(field, "rate")
    if _check_number(violations, rate_path, model.rate) and model.rate > 100:
        violations.add(rate_path, "must be a percentage from 0 to 100")
    _check_number(violations, _path(field, "fixed_fee"), model.fixed_fee)
    if model.free_events < 0:
        violations.add(_path(field, "free_events"), "must not be negative")
    _check_number(violations, _path(field, "free_amount"), model.free_amount)
    _check_bounds(
        violations,
        model.min_per_event,
        model.max_per_event,
        minimum_path=_path(field, "min_per_event"),
        maximum_path=_path(field, "max_per_event"),
    )


def _check_bounds(
    violations: Violations,
    minimum: Decimal | None,
    maximum: Decimal | None,
    *,
    minimum_path: str,
    maximum_path: str,
) -> None:
    minimum_ok = minimum is None or _check_number(violations, minimum_path, minimum)
    maximum_ok = maximum is None or _check_number(violations, maximum_path, maximum)
    if minimum_ok and maximum_ok and minimum is not None and maximum is not None and minimum > maximum:
        violations.add(maximum_path, f"must be at least {minimum_path.rsplit('.', 1)[-1]} ({minimum})")


def validate(model: PricingModel, *, field: str) -> None:
    """Raise InvalidArgument naming every field of `model` (under `field`) that breaks a rule."""
    violations = Violations()
    if isinstance(model, PerUnit):
        _check_number(violations, _path(field, "unit_price"), model.unit_price)
    elif isinstance(model, Graduated | Volume):
        _check_tiers(violations, _path(field, "tiers"), model.tiers)
    elif isinstance(model, Package):
        if _check_number(violations, _path(field, "size"), model.size) and model.size == 0:
            violations.add(_path(field, "size"), "must be greater than zero")
        _check_number(violations, _path(field, "price"), model.price)
        _check_number(violations, _path(field, "free_units"), model.free_units)
    elif isinstance(model, Percentage):
        _check_percentage(violations, field, model)
    else:
        raise TypeError(f"not a pricing model: {type(model).__name__}")
    violations.raise_if_any()


def validate_spend_bounds(
    minimum: Decimal | None, maximum: Decimal | None, *, minimum_field: str, maximum_field: str
) -> None:
    """The rules for a minimum and maximum spend: model numbers, and minimum <= maximum."""
    _require_optional_decimal(minimum, "minimum")
    _require_optional_decimal(maximum, "maximum")
    violations = Violations()
    _check_bounds(violations, minimum, maximum, minimum_path=minimum_field, maximum_path=maximum_field)
    violations.raise_if_any()


def _require_valid(model: PricingModel) -> None:
    try:
        validate(model, field="")
    except InvalidArgument as error:
        raise ValueError(f"invalid pricing model, validate it first: {error.message}") from error


def _check_quantity(quantity: object, field: str) -> Decimal:
    if not isinstance(quantity, Decimal):
        raise TypeError(f"quantity must be a Decimal, not {type(quantity).__name__}")
    if not quantity.is_finite():
        raise InvalidArgument.field(field, "must be a finite number")
    if quantity < 0:
        raise InvalidArgument.field(field, "must not be negative")
    return quantity.copy_abs()  # -0 is 0


# ---------------------------------------------------------------- quantity models


def tier_index_for(tiers: Sequence[Tier], quantity: Decimal) -> int:
    """The 0-based index of the tier containing `quantity`: the first whose up_to is >= it."""
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            return index
    raise ValueError("the last tier must be unbounded")


def _line(index: int, units: Decimal, unit_price: Decimal, flat_fee: Decimal) -> TierLine:
    amount = _C.add(_C.multiply(units, unit_price), flat_fee)
    return TierLine(index, units, unit_price, flat_fee, amount)


def _graduated_lines(tiers: tuple[Tier, ...], quantity: Decimal) -> tuple[TierLine, ...]:
    lines = []
    lower = _ZERO
    for index, tier in enumerate(tiers):
        # Tier 0 is always reached (its flat fee is billed at zero usage); tier i > 0 once
        # the quantity is above the previous tier's inclusive bound.
        if index > 0 and quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        lines.append(_line(index, _C.subtract(upper, lower), tier.unit_price, tier.flat_fee))
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(lines)


def _ceil_divide(dividend: Decimal, divisor: Decimal) -> Decimal:
    # divmod gives the integral quotient and the remainder exactly; no inexact division.
    quotient, remainder = _C.divmod(dividend, divisor)
    return _C.add(quotient, _ONE) if remainder else quotient


def package_count(model: Package, quantity: Decimal) -> Decimal:
    """The whole packages billed: free units first, then a started package counts as one."""
    billable = max(_C.subtract(quantity, model.free_units), _ZERO)
    return _ceil_divide(billable, model.size)


def breakdown(model: QuantityModel, quantity: Decimal, *, field: str = "quantity") -> tuple[TierLine, ...]:
    """The parts of the line for `quantity` units, exactly; `field` names the quantity in errors."""
    if not isinstance(model, PerUnit | Graduated | Volume | Package):
        raise TypeError(f"breakdown prices a quantity model, not {type(model).__name__}")
    _require_valid(model)
    quantity = _check_quantity(quantity, field)
    if isinstance(model, PerUnit):
        return (_line(0, quantity, model.unit_price, _ZERO),)
    if isinstance(model, Graduated):
        return _graduated_lines(model.tiers, quantity)
    if isinstance(model, Volume):
        index = tier_index_for(model.tiers, quantity)
        tier = model.tiers[index]
        return (_line(index, quantity, tier.unit_price, tier.flat_fee),)
    return (_line(0, package_count(model, quantity), model.price, _ZERO),)


def _total(values: Sequence[Decimal]) -> Decimal:
    total = _ZERO
    for value in values:
        total = _C.add(total, value)
    return total


def amount_for(model: QuantityModel, quantity: Decimal, *, field: str = "quantity") -> Decimal:
    """The exact amount of the line for `quantity` units: the sum of its breakdown, unrounded."""
    return _total([line.amount for line in breakdown(model, quantity, field=field)])


# ---------------------------------------------------------------- percentage


def _check_event_amounts(event_amounts: Sequence[Decimal], field: str) -> None:
    if isinstance(event_amounts, str | bytes) or not isinstance(event_amounts, Sequence):
        raise TypeError("event_amounts must be a sequence of Decimal")
    for index, amount in enumerate(event_amounts):
        _require_decimal(amount, f"{field}[{index}]")
        if not amount.is_finite():
            raise InvalidArgument.field(f"{field}[{index}]", "must be a finite number")
        if amount < 0:
            raise InvalidArgument.field(f"{field}[{index}]", "must not be negative")


def _charged_fee(model: Percentage, charged: Decimal) -> Decimal:
    rate_part = _C.scaleb(_C.multiply(charged, model.rate), -2)  # / 100, exactly
    fee = _C.add(rate_part, model.fixed_fee)
    if model.min_per_event is not None and fee < model.min_per_event:
        return model.min_per_event
    if model.max_per_event is not None and fee > model.max_per_event:
        return model.max_per_event
    return fee


def percentage_event_fees(
    model: Percentage, event_amounts: Sequence[Decimal], *, field: str = "event_amounts"
) -> tuple[Decimal, ...]:
    """Each event's exact fee, in order, by the rules in the module doc (free events are 0)."""
    if not isinstance(model, Percentage):
        raise TypeError(f"percentage_event_fees prices a Percentage, not {type(model).__name__}")
    _require_valid(model)
    _check_event_amounts(event_amounts, field)
    fees = []
    in_allowance = model.free_events > 0 or model.free_amount > 0
    running = _ZERO
    for number, amount in enumerate(event_amounts, start=1):
        running = _C.add(running, amount)
        charged = amount
        if in_allowance:
            within_count = model.free_events == 0 or number <= model.free_events
            within_amount = model.free_amount == 0 or running <= model.free_amount
            if within_count and within_amount:
                fees.append(_ZERO)
                continue
            in_allowance = False
            if within_count:  # it crossed free_amount: only the part above it is charged
                charged = _C.subtract(running, model.free_amount)
        fees.append(_charged_fee(model, charged))
    return tuple(fees)


def percentage_amount(
    model: Percentage, event_amounts: Sequence[Decimal], *, field: str = "event_amounts"
) -> Decimal:
    """The exact amount of the line for these transactions: the sum of their fees, unrounded."""
    return _total(percentage_event_fees(model, event_amounts, field=field))


# ---------------------------------------------------------------- the invoice line


def bounded_total(
    total: Decimal, *, minimum: Decimal | None, maximum: Decimal | None
) -> tuple[Decimal, Decimal]:
    """(amount to bill, adjustment): the adjustment line true-ups to `minimum` or caps at `maximum`.

    adjustment = billed - total: positive for a minimum-spend true-up, negative for a cap,
    0 within the bounds. ValueError when minimum > maximum (validate_spend_bounds first).
    """
    _require_decimal(total, "total")
    _require_optional_decimal(minimum, "minimum")
    _require_optional_decimal(maximum, "maximum")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(f"minimum {minimum} is above maximum {maximum}")
    billed = total
    if minimum is not None and total < minimum:
        billed = minimum
    elif maximum is not None and total > maximum:
        billed = maximum
    return billed, _C.subtract(billed, total)


def line_minor_units(amount: Decimal, currency_code: str) -> int:
    """The line's amount in minor units: the one rounding, half-up (core.money.to_minor_units)."""
    _require_decimal(amount, "amount")
    return to_minor_units(amount, currency_code)

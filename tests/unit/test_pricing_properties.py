"""Pricing models: Hypothesis properties over random tiers, quantities and transactions."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_svc.catalog.pricing import (
    Graduated,
    Package,
    Percentage,
    PerUnit,
    QuantityModel,
    Tier,
    Volume,
    amount_for,
    bounded_total,
    breakdown,
    line_minor_units,
    percentage_amount,
    percentage_event_fees,
    tier_index_for,
)
from core import currencies
from core.money import DECIMAL_CONTEXT

D = Decimal
FAST = settings(max_examples=200, deadline=None)


def scaled(coefficient: int, places: int) -> Decimal:
    """coefficient * 10**-places, exactly."""
    return DECIMAL_CONTEXT.scaleb(Decimal(coefficient), -places)


# Unit prices up to 12 places (a few major units at most), fees and amounts in cents or finer,
# quantities up to 10^7 with up to 3 places: small enough that every product stays exact.
unit_prices = st.builds(scaled, st.integers(0, 10**7), st.sampled_from([0, 2, 4, 6, 12]))
flat_fees = st.builds(scaled, st.integers(0, 10**6), st.integers(0, 3))
quantities = st.builds(scaled, st.integers(0, 10**7), st.integers(0, 3))
positive_quantities = st.builds(scaled, st.integers(1, 10**7), st.integers(0, 3))


@st.composite
def tier_tables(draw: st.DrawFn, prices: str = "any", fees: bool = True) -> tuple[Tier, ...]:
    """1 to 6 valid tiers; `prices` "up" makes unit prices non-decreasing, "down" non-increasing."""
    bounds: list[Decimal | None] = [*sorted(set(draw(st.lists(quantities, max_size=5)))), None]
    count = len(bounds)
    price_list = draw(st.lists(unit_prices, min_size=count, max_size=count))
    if prices == "up":
        price_list.sort()
    elif prices == "down":
        price_list.sort(reverse=True)
    fee_list = draw(st.lists(flat_fees if fees else st.just(D(0)), min_size=count, max_size=count))
    return tuple(Tier(b, p, f) for b, p, f in zip(bounds, price_list, fee_list, strict=True))


packages = st.builds(
    Package,
    st.builds(scaled, st.integers(1, 10**5), st.integers(0, 3)),
    flat_fees,
    quantities,
)
quantity_models: st.SearchStrategy[QuantityModel] = st.one_of(
    st.builds(PerUnit, unit_prices),
    st.builds(Graduated, tier_tables()),
    st.builds(Volume, tier_tables()),
    packages,
)


def fee_total(tiers: tuple[Tier, ...]) -> Decimal:
    return sum((tier.flat_fee for tier in tiers), D(0))


# ---------------------------------------------------------------- graduated against volume


@FAST
@given(tier_tables(prices="up"), quantities)
def test_graduated_exceeds_volume_by_at_most_the_flat_fees_when_prices_do_not_decrease(tiers, quantity):
    # Precondition: unit prices non-decreasing from tier to tier. Then every unit volume prices
    # at the top tier's price costs at least as much as graduated's price for it, so only the
    # flat fees of the tiers below the one reached can put graduated above volume.
    graduated = amount_for(Graduated(tiers), quantity)
    volume = amount_for(Volume(tiers), quantity)
    assert graduated <= volume + fee_total(tiers)
    below = tiers[: tier_index_for(tiers, quantity)]
    assert graduated <= volume + fee_total(below)


@FAST
@given(tier_tables(prices="down"), quantities)
def test_volume_never_exceeds_graduated_when_prices_do_not_increase(tiers, quantity):
    # The mirrored inequality holds, and more strongly: with non-increasing prices graduated
    # prices every unit at least as high as volume does, and bills every flat fee volume bills.
    assert amount_for(Volume(tiers), quantity) <= amount_for(Graduated(tiers), quantity)


def test_graduated_may_exceed_volume_by_more_than_the_flat_fees_when_prices_decrease() -> None:
    # Without the precondition the first inequality fails: no flat fees, yet graduated is higher.
    tiers = (Tier(D(10), D(1)), Tier(None, D("0.5")))
    assert amount_for(Graduated(tiers), D(20)) == 15
    assert amount_for(Volume(tiers), D(20)) == 10


# ---------------------------------------------------------------- monotonicity


@FAST
@given(
    st.one_of(st.builds(PerUnit, unit_prices), st.builds(Graduated, tier_tables()), packages),
    quantities,
    quantities,
)
def test_per_unit_graduated_and_package_are_monotone_in_quantity(model, first, second):
    low, high = sorted((first, second))
    assert amount_for(model, low) <= amount_for(model, high)


def test_volume_is_not_monotone_across_a_tier_bound() -> None:
    model = Volume((Tier(D(10), D(1)), Tier(None, D("0.5"))))
    assert amount_for(model, D(10)) == 10
    assert amount_for(model, D(11)) == D("5.5")


@FAST
@given(tier_tables(), positive_quantities, st.integers(0, 100))
def test_volume_is_monotone_within_a_tier(tiers, high, percent):
    index = tier_index_for(tiers, high)
    lower = D(0) if index == 0 else tiers[index - 1].up_to
    assert lower is not None
    # A quantity between the tier's lower bound and `high`, inside the same tier.
    low = DECIMAL_CONTEXT.add(lower, DECIMAL_CONTEXT.scaleb((high - lower) * percent, -2))
    if index > 0 and low == lower:
        low = high
    assert tier_index_for(tiers, low) == index
    assert amount_for(Volume(tiers), low) <= amount_for(Volume(tiers), high)


# ---------------------------------------------------------------- exactness and types


@FAST
@given(quantity_models, quantities)
def test_amount_for_is_the_exact_sum_of_the_breakdown(model, quantity):
    lines = breakdown(model, quantity)
    amount = amount_for(model, quantity)
    assert isinstance(amount, Decimal)
    assert amount == sum((line.amount for line in lines), D(0))
    for line in lines:
        assert all(isinstance(v, Decimal) for v in (line.units, line.unit_price, line.flat_fee, line.amount))
        assert line.amount == line.units * line.unit_price + line.flat_fee


def half_up(amount: Decimal, exponent: int) -> int:
    """Round to the nearest minor unit, a tie away from zero, in exact rational arithmetic."""
    scaled_amount = Fraction(amount) * 10**exponent
    magnitude = math.floor(abs(scaled_amount) + Fraction(1, 2))
    return -magnitude if scaled_amount < 0 else magnitude


@FAST
@given(st.sampled_from(["JPY", "USD", "KWD"]), quantity_models, quantities)
def test_line_minor_units_is_the_half_up_rounding_of_the_exact_amount(code, model, quantity):
    amount = amount_for(model, quantity)
    assert line_minor_units(amount, code) == half_up(amount, currencies.exponent(code))


@FAST
@given(st.sampled_from(["JPY", "USD", "KWD"]), st.integers(-(10**15), 10**15), st.integers(0, 6))
def test_line_minor_units_rounds_ties_and_credits_half_up(code, coefficient, extra):
    # Amounts ending in exactly half a minor unit, or near it, of either sign.
    amount = scaled(coefficient * 10 + 5, currencies.exponent(code) + 1 + extra)
    assert line_minor_units(amount, code) == half_up(amount, currencies.exponent(code))
    assert line_minor_units(-amount, code) == -line_minor_units(amount, code)


refused = st.one_of(st.floats(allow_nan=True), st.integers(), st.booleans(), st.text(max_size=3))


@FAST
@given(quantity_models, refused)
def test_non_decimal_quantity_is_a_type_error(model, quantity):
    with pytest.raises(TypeError):
        amount_for(model, quantity)


@FAST
@given(st.floats(allow_nan=True))
def test_float_prices_are_a_type_error(value):
    builds: list[Callable[[], object]] = [
        lambda: Tier(None, value),
        lambda: Tier(value, D(1)),
        lambda: Tier(None, D(1), value),
        lambda: PerUnit(value),
        lambda: Package(value, D(1)),
        lambda: Package(D(1), value),
        lambda: Package(D(1), D(1), value),
        lambda: Percentage(value),
        lambda: Percentage(D(1), fixed_fee=value),
        lambda: Percentage(D(1), free_amount=value),
        lambda: Percentage(D(1), min_per_event=value),
        lambda: Percentage(D(1), max_per_event=value),
        lambda: line_minor_units(value, "USD"),
        lambda: bounded_total(value, minimum=None, maximum=None),
        lambda: percentage_amount(Percentage(D(1)), [D(1), value]),
    ]
    for build in builds:
        with pytest.raises(TypeError):
            build()


# ---------------------------------------------------------------- percentage


event_amounts = st.lists(st.builds(scaled, st.integers(0, 10**8), st.integers(0, 2)), max_size=20)
rates = st.builds(scaled, st.integers(0, 10_000), st.integers(0, 2)).filter(lambda rate: rate <= 100)


@FAST
@given(rates, flat_fees, event_amounts)
def test_percentage_without_allowance_or_bounds_is_the_rate_of_the_total_plus_fixed_fees(rate, fixed, events):
    amount = percentage_amount(Percentage(rate, fixed_fee=fixed), events)
    assert isinstance(amount, Decimal)
    assert amount == sum(events, D(0)) * rate / 100 + fixed * len(events)


@FAST
@given(rates, flat_fees, st.integers(0, 5), flat_fees, event_amounts)
def test_percentage_free_allowance_never_raises_the_amount(rate, fixed, free_events, free_amount, events):
    free = Percentage(rate, fixed_fee=fixed, free_events=free_events, free_amount=free_amount)
    assert percentage_amount(free, events) <= percentage_amount(Percentage(rate, fixed_fee=fixed), events)
    if free_amount == 0:
        assert all(fee == 0 for fee in percentage_event_fees(free, events)[:free_events])


@FAST
@given(rates, flat_fees, flat_fees, flat_fees, event_amounts)
def test_percentage_charged_event_fees_lie_within_the_bounds(rate, fixed, first, second, events):
    low, high = sorted((first, second))
    model = Percentage(rate, fixed_fee=fixed, min_per_event=low, max_per_event=high)
    fees = percentage_event_fees(model, events)
    assert len(fees) == len(events)
    assert all(low <= fee <= high for fee in fees)


# ---------------------------------------------------------------- minimum and maximum spend


@FAST
@given(st.builds(scaled, st.integers(-(10**8), 10**8), st.integers(0, 2)), flat_fees, flat_fees)
def test_bounded_total_bills_within_the_bounds_and_the_adjustment_is_the_difference(total, first, second):
    minimum, maximum = sorted((first, second))
    billed, adjustment = bounded_total(total, minimum=minimum, maximum=maximum)
    assert minimum <= billed <= maximum
    assert billed == total + adjustment
    assert (adjustment == 0) == (minimum <= total <= maximum)

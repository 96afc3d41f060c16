"""fraction_to_minor_units: the one rounding rule (half away from zero) for exact fractions."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core import currencies
from core.money import DECIMAL_CONTEXT, fraction_to_minor_units, to_minor_units

codes = st.sampled_from(sorted(currencies.EXPONENTS))
fractions = st.builds(Fraction, st.integers(-(10**30), 10**30), st.integers(1, 10**15))


def scaled(coefficient: int, places: int) -> Decimal:
    return DECIMAL_CONTEXT.scaleb(Decimal(coefficient), -places)


decimals = st.builds(scaled, st.integers(-(10**24), 10**24), st.integers(0, 12))


@pytest.mark.parametrize(
    ("value", "code", "expected"),
    [
        # Ties, each a half minor unit exactly: away from zero, never to even.
        (Fraction(1, 2), "JPY", 1),
        (Fraction(5, 2), "JPY", 3),
        (Fraction(-5, 2), "JPY", -3),
        (Fraction(1, 8), "USD", 13),  # 0.125
        (Fraction(-1, 8), "USD", -13),
        (Fraction(3, 8), "USD", 38),  # 0.375
        (Fraction(1, 2000), "KWD", 1),  # 0.0005
        (Fraction(-1, 2000), "KWD", -1),
        (Fraction(3, 2000), "KWD", 2),  # 0.0015
        # Not ties: to the nearest, for amounts no finite decimal holds.
        (Fraction(10, 3), "USD", 333),
        (Fraction(20, 3), "USD", 667),
        (Fraction(-20, 3), "USD", -667),
        (Fraction(10, 3), "JPY", 3),
        (Fraction(1, 3), "KWD", 333),
        (Fraction(2, 3), "KWD", 667),
        # Just either side of a tie.
        (Fraction(5, 2) - Fraction(1, 10**20), "JPY", 2),
        (Fraction(5, 2) + Fraction(1, 10**20), "JPY", 3),
        (Fraction(-5, 2) + Fraction(1, 10**20), "JPY", -2),
        # Ints are exact amounts too.
        (3, "USD", 300),
        (-3, "KWD", -3000),
        (0, "JPY", 0),
        # Far past what a float or DECIMAL_CONTEXT holds, still exact.
        (Fraction(10**45 + 1, 2), "JPY", (10**45 + 2) // 2),
    ],
)
def test_rounds_half_away_from_zero(value: Fraction | int, code: str, expected: int) -> None:
    assert fraction_to_minor_units(value, code) == expected


@given(codes, fractions)
@example("JPY", Fraction(5, 2))
@example("USD", Fraction(1, 8))
@example("KWD", Fraction(1, 2000))
def test_negation_is_symmetric(code: str, value: Fraction) -> None:
    assert fraction_to_minor_units(-value, code) == -fraction_to_minor_units(value, code)


@given(codes, decimals)
@example("USD", Decimal("0.125"))
@example("USD", Decimal("-0.125"))
@example("JPY", Decimal("2.5"))
@example("KWD", Decimal("0.0005"))
@example("KWD", Decimal("-1.0004999999999"))
def test_agrees_with_to_minor_units_on_decimals(code: str, amount: Decimal) -> None:
    assert fraction_to_minor_units(Fraction(amount), code) == to_minor_units(amount, code)


@given(codes, fractions)
def test_goes_to_the_nearest_minor_unit_and_ties_away_from_zero(code: str, value: Fraction) -> None:
    exact = value * 10 ** currencies.exponent(code)
    rounded = fraction_to_minor_units(value, code)
    assert abs(rounded - exact) <= Fraction(1, 2)
    if abs(rounded - exact) == Fraction(1, 2):  # a tie: the magnitude went up
        assert abs(rounded) > abs(exact)


@given(codes, fractions, fractions)
def test_is_monotonic(code: str, a: Fraction, b: Fraction) -> None:
    low, high = sorted((a, b))
    assert fraction_to_minor_units(low, code) <= fraction_to_minor_units(high, code)


@pytest.mark.parametrize("value", [0.5, 1.0, True, False, Decimal("0.5"), "0.5", None])
def test_refuses_anything_but_fractions_and_ints(value: object) -> None:
    with pytest.raises(TypeError):
        fraction_to_minor_units(value, "USD")  # type: ignore[arg-type]


def test_refuses_unknown_currencies() -> None:
    with pytest.raises(ValueError, match="ISO 4217"):
        fraction_to_minor_units(Fraction(1, 3), "XXX")
    with pytest.raises(TypeError):
        fraction_to_minor_units(Fraction(1, 3), None)  # type: ignore[arg-type]

"""Money, once: the one place amounts, unit prices and rounding are defined.

An amount is `Money`: a whole number of minor units plus an ISO 4217 code, the
currency's exponent (core.currencies) saying what a minor unit is (JPY 0,
USD 2, KWD 3). A unit price that needs more precision than that (0.000125 USD
per request) is a `decimal.Decimal` read by `parse_unit_price`.

There is one rounding rule, and every invoice line is rounded exactly once
with it: a line is computed exactly in major units, then rounded to Money.
Totals are sums of Money, which are exact. The rule is ROUND_HALF_UP as the
decimal module defines it: to the nearest minor unit, and a tie goes away from
zero, so 0.125 USD is 0.13 and -0.125 USD is -0.13. Rounding a credit
therefore gives exactly the negation of rounding the matching debit.

The rule has two entry points, one per kind of exact amount, and the tests
hold them to the same answers: `to_minor_units` for a Decimal (price times
quantity, computed in DECIMAL_CONTEXT), and `fraction_to_minor_units` for a
fractions.Fraction, for amounts no finite decimal can hold, such as a price
prorated by seconds remaining over seconds in the period (10 USD x 1/3).

No float touches money: every entry point takes `int` or `Decimal` (the parser
takes `str`, fraction_to_minor_units a Fraction or an int) and raises
TypeError for a float or a bool, so a float cannot slip in and be converted
silently. Nothing here knows about gRPC or protobuf;
core.money_proto converts to and from the wire.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Final

from core import currencies
from core.errors import InvalidArgument

# The one decimal context for money arithmetic, instead of the thread's ambient
# one, which any library can change under us. 40 digits hold a unit price at
# its limits (18 integer and 12 decimal digits) times a 10-digit quantity
# exactly. Inexact is trapped too: an operation that would have to round would
# be a hidden second rounding, so it fails loudly instead. Do not mutate it;
# take .copy() for an experiment.
DECIMAL_CONTEXT: Final = decimal.Context(
    prec=40,
    rounding=decimal.ROUND_HALF_UP,
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero, decimal.Inexact],
)

# Minor units travel as int64 (proto) and are stored as BIGINT, so an amount
# outside that range is refused where it arises rather than at the edge.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

MAX_UNIT_PRICE_PLACES: Final = 12
# Exclusive bound on a unit price: at most 18 integer digits, as written.
UNIT_PRICE_LIMIT: Final = Decimal("1E+18")

# ASCII digits only ([0-9], not \d, which also matches other scripts' digits),
# at least one on each side of an optional point; no exponent, no spaces.
_DECIMAL_TEXT: Final = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]+))?")


def _require_int(value: object, what: str) -> int:
    """Return `value` if it is a true int; bools and floats are refused, never converted."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def _require_amount(value: object, what: str) -> Decimal:
    """Accept a Decimal or an int (converted exactly); refuse floats, bools and the rest."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a Decimal or an int, not {type(value).__name__}")
    return Decimal(value)


def _exponent(currency_code: object) -> int:
    """The currency's exponent; TypeError for a non-string, ValueError for an unknown code."""
    if not isinstance(currency_code, str):
        raise TypeError(f"currency code must be a str, not {type(currency_code).__name__}")
    if not currencies.is_known(currency_code):
        raise ValueError(f"{currency_code!r} is not an ISO 4217 currency code Tally bills in")
    return currencies.exponent(currency_code)


def _shift(amount: Decimal, places: int) -> Decimal:
    """amount * 10**places, exactly: only the exponent moves, so no context and no rounding."""
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # callers pass finite values only
    return Decimal((sign, digits, exponent + places))


def to_minor_units(amount: Decimal | int, currency_code: str) -> int:
    """Round an amount in major units to whole minor units: the rounding rule of Tally.

    ROUND_HALF_UP: to the nearest minor unit; a value exactly halfway goes away
    from zero (USD 0.125 -> 13 cents, -0.125 -> -13 cents), so
    to_minor_units(-x) == -to_minor_units(x) always. Each invoice line is
    rounded exactly once, here (or, for an exact fraction, by the same rule in
    fraction_to_minor_units), and never again; totals add rounded lines.
    """
    value = _require_amount(amount, "amount")
    places = _exponent(currency_code)
    if not value.is_finite():
        raise ValueError(f"amount must be a finite number, not {value}")
    # to_integral_value neither rounds to the context's precision nor signals
    # Inexact, so this is the one rounding and the trap stays quiet.
    rounded = _shift(value, places).to_integral_value(rounding=decimal.ROUND_HALF_UP, context=DECIMAL_CONTEXT)
    return int(rounded)


def fraction_to_minor_units(value: Fraction | int, currency_code: str) -> int:
    """Round an exact rational amount in major units to whole minor units, by the one rule.

    The same ROUND_HALF_UP as to_minor_units (nearest minor unit, a tie away from
    zero, so fraction_to_minor_units(-x) == -fraction_to_minor_units(x)), for
    amounts that are exact only as fractions: USD 10 x 1/3 is 333 cents and
    USD 1/8 is 13. Integer arithmetic only; a Decimal goes to to_minor_units,
    and a float or a bool is refused.
    """
    if isinstance(value, bool) or not isinstance(value, Fraction | int):
        raise TypeError(f"amount must be a Fraction or an int, not {type(value).__name__}")
    minor_per_major: int = 10 ** _exponent(currency_code)
    scaled = Fraction(value) * minor_per_major
    numerator, denominator = abs(scaled.numerator), scaled.denominator
    # floor(|x| + 1/2), with x = numerator / denominator: a tie goes up in magnitude.
    magnitude = (2 * numerator + denominator) // (2 * denominator)
    return -magnitude if scaled < 0 else magnitude


@dataclass(frozen=True, slots=True)
class Money:
    """An amount: whole minor units of one currency. Negative amounts are credits.

    Immutable and hashable. Arithmetic stays in one currency; mixing two is a
    bug in the caller, so it raises ValueError rather than guessing a rate.
    Equality is plain (USD 1 != EUR 1); ordering across currencies raises.
    """

    currency_code: str
    amount_minor: int

    def __post_init__(self) -> None:
        _exponent(self.currency_code)
        minor = _require_int(self.amount_minor, "amount_minor")
        if not INT64_MIN <= minor <= INT64_MAX:
            raise ValueError(f"{self.currency_code} amount of {minor} minor units is outside the int64 range")

    @classmethod
    def zero(cls, currency_code: str) -> Money:
        return cls(currency_code, 0)

    @classmethod
    def from_decimal(cls, amount: Decimal | int, currency_code: str) -> Money:
        """Money from major units that are already whole minor units (USD 12.50, not 12.505).

        Refuses anything that would need rounding: a caller that wants rounding
        says so with Money(code, to_minor_units(amount, code)).
        """
        money = cls(currency_code, to_minor_units(amount, currency_code))
        if money.to_decimal() != amount:
            raise ValueError(
                f"{amount} {currency_code} is not a whole number of minor units "
                f"({currencies.exponent(currency_code)} decimal places); round it with to_minor_units"
            )
        return money

    @property
    def exponent(self) -> int:
        return currencies.exponent(self.currency_code)

    def to_decimal(self) -> Decimal:
        """The amount in major units, exactly, at the currency's scale (USD 1250 -> 12.50)."""
        return _shift(Decimal(self.amount_minor), -self.exponent)

    def _same_currency(self, other: Money, operation: str) -> None:
        if other.currency_code != self.currency_code:
            raise ValueError(f"cannot {operation} {self.currency_code} and {other.currency_code} amounts")

    def __add__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "add")
        return Money(self.currency_code, self.amount_minor + other.amount_minor)

    def __sub__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "subtract")
        return Money(self.currency_code, self.amount_minor - other.amount_minor)

    def __neg__(self) -> Money:
        return Money(self.currency_code, -self.amount_minor)

    def __mul__(self, factor: int) -> Money:
        """Money times a whole number. A fractional factor needs rounding: use to_minor_units."""
        return Money(self.currency_code, self.amount_minor * _require_int(factor, "factor"))

    __rmul__ = __mul__

    def _difference(self, other: Money) -> int:
        self._same_currency(other, "compare")
        return self.amount_minor - other.amount_minor

    def __lt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self._difference(other) < 0

    def __le__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self._difference(other) <= 0

    def __gt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self._difference(other) > 0

    def __ge__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self._difference(other) >= 0

    def __str__(self) -> str:
        return f"{self.currency_code} {self.to_decimal():f}"


def sum_money(amounts: Iterable[Money], *, currency_code: str) -> Money:
    """The exact total of `amounts`, all in `currency_code`; zero of that currency when empty.

    The currency is explicit so that an empty invoice still has a total. Only
    the total must fit in int64: a credit later in the list may bring a large
    running sum back into range.
    """
    _exponent(currency_code)
    total = 0
    for amount in amounts:
        if not isinstance(amount, Money):
            raise TypeError(f"can only sum Money, not {type(amount).__name__}")
        if amount.currency_code != currency_code:
            raise ValueError(f"cannot add {amount.currency_code} to a {currency_code} total")
        total += amount.amount_minor
    return Money(currency_code, total)


def parse_unit_price(text: str, *, field: str) -> Decimal:
    """Read a unit price, such as "0.000125", exactly; InvalidArgument naming `field` if it is not one.

    Accepted: ASCII digits with an optional point followed by 1 to 12 digits,
    an optional leading "+", less than 10^18. Refused: the empty string, a
    minus sign (even on zero; a unit price is never negative, credits are
    separate lines), exponents ("1e3"), NaN and infinities, spaces anywhere,
    ".5" and "5.", thousands separators, and more than 12 decimal places even
    when they are zeros. The scale is kept as written ("1.50" stays 1.50).
    """
    if not isinstance(text, str):
        raise TypeError(f"unit price must be parsed from a str, not {type(text).__name__}")
    if not text:
        raise InvalidArgument.field(field, "is required: a decimal string such as 12.50 or 0.000125")
    match = _DECIMAL_TEXT.fullmatch(text)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a plain decimal string such as 12.50 or 0.000125 (no exponent or spaces)"
        )
    sign, _, fraction = match.groups()
    if sign == "-":
        raise InvalidArgument.field(field, "must not be negative")
    if fraction is not None and len(fraction) > MAX_UNIT_PRICE_PLACES:
        raise InvalidArgument.field(
            field, f"must be a decimal string with at most {MAX_UNIT_PRICE_PLACES} decimal places"
        )
    value = Decimal(text)
    if value >= UNIT_PRICE_LIMIT:
        raise InvalidArgument.field(field, "must be less than 10^18")
    return value

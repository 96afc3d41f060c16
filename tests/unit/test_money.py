"""Money, unit prices and the one rounding rule: examples, tables and Hypothesis properties."""

from __future__ import annotations

import decimal
from collections.abc import Callable
from decimal import Decimal

import iso4217
import pytest
from google.type import decimal_pb2
from hypothesis import example, given
from hypothesis import strategies as st

from core import currencies
from core.errors import InvalidArgument
from core.money import (
    DECIMAL_CONTEXT,
    INT64_MAX,
    INT64_MIN,
    Money,
    parse_unit_price,
    sum_money,
    to_minor_units,
)
from core.money_proto import decimal_from_proto, decimal_to_proto, money_from_proto, money_to_proto
from tally.type.v1 import money_pb2

CODES = sorted(currencies.EXPONENTS)

codes = st.sampled_from(CODES)
int64s = st.integers(INT64_MIN, INT64_MAX)
# Small enough that a few hundred of them still sum inside int64.
line_minors = st.integers(-(10**15), 10**15)


def scaled(coefficient: int, places: int) -> Decimal:
    """coefficient * 10**-places as a Decimal, exactly."""
    return DECIMAL_CONTEXT.scaleb(Decimal(coefficient), -places)


# Amounts in major units with 0 to 12 decimal places, of either sign.
amounts = st.builds(scaled, st.integers(-(10**24), 10**24), st.integers(0, 12))
# Invoice lines: at most 10^14 major units, so 50 of them in KWD still fit in int64.
line_amounts = st.builds(scaled, st.integers(-(10**14), 10**14), st.integers(0, 12))
# What parse_unit_price accepts: non-negative, below 10^18, 0 to 12 decimal places.
unit_prices = st.integers(0, 12).flatmap(
    lambda places: st.builds(scaled, st.integers(0, 10 ** (18 + places) - 1), st.just(places))
)


def field_error(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        call()
    [violation] = caught.value.violations
    return violation.field, violation.description


# ---------------------------------------------------------------- the currency table


def iso_table() -> dict[str, str]:
    """ISO code -> minor units ("2", or "N.A." where there is none), from the iso4217 package."""
    return {
        code: str(entry["CcyMnrUnts"])
        for code, entry in iso4217.raw_table.items()
        if code is not None  # the entry for Antarctica, which has no currency
    }


def iso_funds_codes() -> set[str]:
    """Codes ISO itself marks as funds (IsFund="true"): instruments, not money anyone invoices in."""
    funds: set[str] = set()
    for entry in iso4217.raw_xml.iter("CcyNtry"):
        name = entry.find("CcyNm")
        if name is not None and name.get("IsFund") == "true":
            funds.add(entry.findtext("Ccy", ""))
    return funds


# Omitted on purpose although ISO gives them a minor unit and does not mark them
# as funds: each is a unit of account or a second code for a currency we carry.
UNITS_OF_ACCOUNT = {"UYW", "XAD"}  # Uruguay's wage-indexed unit; the Arab Monetary Fund's dinar
SECOND_CODES = {"VED": "VES"}  # Venezuela's bolivar has two ISO codes; we bill it as VES


def test_every_currency_matches_iso4217() -> None:
    iso = iso_table()
    wrong = {
        code: (exponent, iso.get(code))
        for code, exponent in currencies.EXPONENTS.items()
        if iso.get(code) != str(exponent)
    }
    assert wrong == {}, f"ours vs ISO 4217 ({iso4217.__published__}): {wrong}"


def test_only_funds_metals_and_units_of_account_are_omitted() -> None:
    """What ISO lists and we leave out: funds; X codes without a minor unit (metals,
    bond-market units, SDR, XTS for testing, XXX); the units and second codes above.
    Anything else missing from our table is a currency someone may bill in."""
    iso = iso_table()
    without_minor_unit = {code for code, minor in iso.items() if minor == "N.A."}
    assert all(code.startswith("X") for code in without_minor_unit)
    assert set(SECOND_CODES.values()) <= set(currencies.EXPONENTS)
    expected = iso_funds_codes() | without_minor_unit | UNITS_OF_ACCOUNT | set(SECOND_CODES)
    assert set(iso) - set(currencies.EXPONENTS) == expected


def test_exponents_of_jpy_usd_kwd() -> None:
    assert Money("JPY", 1200).to_decimal() == Decimal("1200")
    assert str(Money("USD", 1250)) == "USD 12.50"
    assert str(Money("KWD", 1250)) == "KWD 1.250"
    assert str(Money("USD", -5)) == "USD -0.05"
    assert to_minor_units(Decimal("12.345"), "JPY") == 12
    assert to_minor_units(Decimal("12.345"), "USD") == 1235
    assert to_minor_units(Decimal("12.345"), "KWD") == 12345


@given(codes, int64s)
def test_to_decimal_is_at_the_currency_scale(code: str, minor: int) -> None:
    assert Money(code, minor).to_decimal().as_tuple().exponent == -currencies.exponent(code)


# ---------------------------------------------------------------- Money


def test_construction_checks_currency_type_and_range() -> None:
    with pytest.raises(ValueError, match="XTS"):
        Money("XTS", 1)
    with pytest.raises(ValueError, match="'usd'"):
        Money("usd", 1)
    with pytest.raises(TypeError):
        Money(b"USD", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money("USD", Decimal(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64"):
        Money("USD", INT64_MAX + 1)
    with pytest.raises(ValueError, match="int64"):
        -Money("USD", INT64_MIN)


def test_arithmetic_within_one_currency() -> None:
    usd = Money("USD", 1250)
    assert usd + Money("USD", -250) == Money("USD", 1000)
    assert usd - Money("USD", 1300) == Money("USD", -50)
    assert -usd == Money("USD", -1250)
    assert usd * 3 == 3 * usd == Money("USD", 3750)
    assert Money("USD", 1) < usd <= usd < Money("USD", 1251)
    assert usd > Money("USD", -1) >= Money("USD", -1)
    assert Money("USD", 1) != Money("EUR", 1)
    assert len({usd, Money("USD", 1250)}) == 1


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
        lambda a, b: sum_money([a, b], currency_code="USD"),
    ],
)
def test_mixing_currencies_names_both(operation: Callable[[Money, Money], object]) -> None:
    with pytest.raises(ValueError, match=r"USD.*EUR|EUR.*USD"):
        operation(Money("USD", 1), Money("EUR", 1))


def test_no_arithmetic_with_plain_numbers() -> None:
    with pytest.raises(TypeError):
        Money("USD", 1) + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        Money("USD", 1) < 2  # type: ignore[operator]  # noqa: B015
    with pytest.raises(TypeError):
        Money("USD", 1) * Decimal("1.5")  # type: ignore[operator]


def test_from_decimal_refuses_values_that_need_rounding() -> None:
    assert Money.from_decimal(Decimal("12.50"), "USD") == Money("USD", 1250)
    assert Money.from_decimal(Decimal("12.5000000"), "USD") == Money("USD", 1250)
    assert Money.from_decimal(7, "JPY") == Money("JPY", 7)
    with pytest.raises(ValueError, match="to_minor_units"):
        Money.from_decimal(Decimal("12.505"), "USD")
    with pytest.raises(ValueError, match="to_minor_units"):
        Money.from_decimal(Decimal("0.5"), "JPY")
    with pytest.raises(ValueError, match="finite"):
        Money.from_decimal(Decimal("NaN"), "USD")


def test_empty_sum_is_zero_of_the_named_currency() -> None:
    assert sum_money([], currency_code="KWD") == Money.zero("KWD")
    with pytest.raises(ValueError, match="XTS"):
        sum_money([], currency_code="XTS")


def test_sum_needs_only_the_total_in_range() -> None:
    lines = [Money("USD", INT64_MAX), Money("USD", 1), Money("USD", -2)]
    assert sum_money(lines, currency_code="USD") == Money("USD", INT64_MAX - 1)


@given(codes, int64s)
def test_minor_to_decimal_to_minor_round_trips(code: str, minor: int) -> None:
    money = Money(code, minor)
    assert to_minor_units(money.to_decimal(), code) == minor
    assert Money.from_decimal(money.to_decimal(), code) == money


@given(codes, st.lists(line_amounts, max_size=50))
def test_total_is_the_sum_of_rounded_lines(code: str, exact_lines: list[Decimal]) -> None:
    lines = [Money(code, to_minor_units(line, code)) for line in exact_lines]
    total = sum_money(lines, currency_code=code)
    assert total.amount_minor == sum(line.amount_minor for line in lines)
    assert sum_money(reversed(lines), currency_code=code) == total
    major = Decimal(0)
    for line in lines:
        major = DECIMAL_CONTEXT.add(major, line.to_decimal())
    assert total.to_decimal() == major


@given(codes, line_minors, line_minors)
def test_addition_and_negation(code: str, a: int, b: int) -> None:
    x, y = Money(code, a), Money(code, b)
    assert (x + y).amount_minor == a + b
    assert x - y == x + -y == -(y - x)
    negated = -x
    assert -negated == x
    assert x + -x == Money.zero(code)
    assert (-x).to_decimal() == -x.to_decimal()


# ---------------------------------------------------------------- the one rounding


@pytest.mark.parametrize(
    ("amount", "code", "minor"),
    [
        ("0.125", "USD", 13),
        ("-0.125", "USD", -13),
        ("0.124999999999", "USD", 12),
        ("-0.124999999999", "USD", -12),
        ("0.5", "JPY", 1),
        ("-0.5", "JPY", -1),
        ("1.5", "JPY", 2),
        ("2.5", "JPY", 3),  # not banker's rounding: no tie goes to even
        ("-2.5", "JPY", -3),
        ("0.0005", "KWD", 1),
        ("-0.0005", "KWD", -1),
        ("-0.0004", "KWD", 0),
    ],
)
def test_half_away_from_zero_examples(amount: str, code: str, minor: int) -> None:
    assert to_minor_units(Decimal(amount), code) == minor


@given(codes, st.integers(-(10**18), 10**18), st.integers(1, 12))
@example("USD", 0, 1)
@example("USD", -1, 1)
def test_every_tie_goes_away_from_zero(code: str, whole: int, extra_places: int) -> None:
    """Halfway between `whole` and its neighbour away from zero (12.5 or -12.5 minor units),
    written with 1 to 12 places past the minor unit (x.5, x.50, ...)."""
    places = currencies.exponent(code)
    half = 5 * 10 ** (extra_places - 1)
    tie_numerator = whole * 10**extra_places + (half if whole >= 0 else -half)
    tie = scaled(tie_numerator, places + extra_places)
    away = whole + 1 if whole >= 0 else whole - 1
    assert to_minor_units(tie, code) == away
    nudge = scaled(1 if whole >= 0 else -1, places + extra_places + 1)
    assert to_minor_units(DECIMAL_CONTEXT.subtract(tie, nudge), code) == whole
    assert to_minor_units(DECIMAL_CONTEXT.add(tie, nudge), code) == away


@given(codes, amounts)
def test_rounding_credits_is_the_negation_of_rounding_debits(code: str, amount: Decimal) -> None:
    assert to_minor_units(-amount, code) == -to_minor_units(amount, code)


@given(codes, amounts)
def test_rounding_goes_to_the_nearest_minor_unit(code: str, amount: Decimal) -> None:
    places = currencies.exponent(code)
    error = DECIMAL_CONTEXT.subtract(scaled(to_minor_units(amount, code), places), amount)
    assert abs(error) <= scaled(5, places + 1)


@given(codes, amounts, amounts)
def test_rounding_is_monotonic(code: str, a: Decimal, b: Decimal) -> None:
    low, high = sorted((a, b))
    assert to_minor_units(low, code) <= to_minor_units(high, code)


def test_rounding_refuses_non_finite_and_unknown() -> None:
    for value in ("NaN", "Infinity", "-Infinity", "sNaN"):
        with pytest.raises(ValueError, match="finite"):
            to_minor_units(Decimal(value), "USD")
    with pytest.raises(ValueError, match="XAU"):
        to_minor_units(Decimal(1), "XAU")
    assert to_minor_units(3, "USD") == 300


# ---------------------------------------------------------------- no floats, anywhere

not_money = st.floats(allow_nan=True, allow_infinity=True) | st.booleans()


@given(not_money)
def test_floats_and_bools_are_refused_everywhere(value: float) -> None:
    calls: list[Callable[[], object]] = [
        lambda: Money("USD", value),  # type: ignore[arg-type]
        lambda: Money.from_decimal(value, "USD"),  # type: ignore[arg-type]
        lambda: to_minor_units(value, "USD"),  # type: ignore[arg-type]
        lambda: parse_unit_price(value, field="price"),  # type: ignore[arg-type]
        lambda: Money("USD", 100) * value,  # type: ignore[operator]
        lambda: value * Money("USD", 100),  # type: ignore[operator]
        lambda: decimal_to_proto(value),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call()


# ---------------------------------------------------------------- unit prices


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", "0"),
        ("12", "12"),
        ("12.50", "12.50"),
        ("0.000125", "0.000125"),
        ("0.000000000001", "0.000000000001"),  # 12 places
        ("999999999999999999.999999999999", "999999999999999999.999999999999"),
        ("007.5", "7.5"),
        ("+1", "1"),  # google.type.Decimal allows the sign; we drop it
    ],
)
def test_unit_prices_accepted(text: str, value: str) -> None:
    parsed = parse_unit_price(text, field="plan.unit_price")
    assert parsed == Decimal(value)
    assert parsed.as_tuple() == Decimal(value).as_tuple()  # the scale is kept as written


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is required"),
        ("0.0000000000001", "at most 12 decimal places"),
        ("1.0000000000000", "at most 12 decimal places"),  # 13 places, even as zeros
        ("1000000000000000000", "less than 10^18"),
        ("-0.5", "must not be negative"),
        ("-0", "must not be negative"),
        ("1e3", "plain decimal string"),
        ("1E-3", "plain decimal string"),
        ("NaN", "plain decimal string"),
        ("nan", "plain decimal string"),
        ("inf", "plain decimal string"),
        ("Infinity", "plain decimal string"),
        (" 1", "plain decimal string"),
        ("1 ", "plain decimal string"),
        ("1\n", "plain decimal string"),
        (".5", "plain decimal string"),
        ("5.", "plain decimal string"),
        ("1,000", "plain decimal string"),
        ("1_000", "plain decimal string"),
        ("+-1", "plain decimal string"),
        ("\u0661", "plain decimal string"),  # ARABIC-INDIC DIGIT ONE: Decimal() would take it
        ("0x10", "plain decimal string"),
    ],
)
def test_unit_prices_refused_naming_the_field(text: str, fragment: str) -> None:
    field, description = field_error(lambda: parse_unit_price(text, field="plan.unit_price"))
    assert field == "plan.unit_price"
    assert fragment in description


def test_unit_price_parser_takes_only_text() -> None:
    with pytest.raises(TypeError):
        parse_unit_price(Decimal("1.5"), field="price")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_unit_price(2, field="price")  # type: ignore[arg-type]


@given(unit_prices)
def test_unit_price_text_round_trips(price: Decimal) -> None:
    parsed = parse_unit_price(format(price, "f"), field="price")
    assert parsed.as_tuple() == price.as_tuple()


# ---------------------------------------------------------------- proto conversion


@given(codes, int64s)
def test_money_proto_round_trip(code: str, minor: int) -> None:
    money = Money(code, minor)
    wire = money_pb2.Money.FromString(money_to_proto(money).SerializeToString())
    assert (wire.currency_code, wire.amount_minor) == (code, minor)
    assert money_from_proto(wire, field="line.amount") == money


@pytest.mark.parametrize(
    ("code", "fragment"),
    [("", "is required"), ("XTS", "'XTS' is not an ISO 4217"), ("usd", "'usd' is not an ISO 4217")],
)
def test_money_from_proto_names_the_field(code: str, fragment: str) -> None:
    message = money_pb2.Money(currency_code=code, amount_minor=100)
    field, description = field_error(lambda: money_from_proto(message, field="line.amount"))
    assert field == "line.amount.currency_code"
    assert fragment in description


@given(unit_prices)
def test_decimal_proto_round_trip(price: Decimal) -> None:
    wire = decimal_pb2.Decimal.FromString(decimal_to_proto(price).SerializeToString())
    assert "E" not in wire.value
    assert decimal_from_proto(wire, field="plan.unit_price").as_tuple() == price.as_tuple()


def test_decimal_to_proto_writes_plain_notation() -> None:
    assert decimal_to_proto(Decimal("1.25E-4")).value == "0.000125"
    assert decimal_to_proto(Decimal("1E+3")).value == "1000"
    assert decimal_to_proto(Decimal("-2.50")).value == "-2.50"
    assert decimal_to_proto(7).value == "7"
    with pytest.raises(ValueError, match="NaN"):
        decimal_to_proto(Decimal("NaN"))


@pytest.mark.parametrize(("value", "fragment"), [("", "is required"), ("1e3", "plain decimal")])
def test_decimal_from_proto_names_the_field(value: str, fragment: str) -> None:
    message = decimal_pb2.Decimal(value=value)
    field, description = field_error(lambda: decimal_from_proto(message, field="plan.unit_price"))
    assert field == "plan.unit_price.value"
    assert fragment in description


def test_rounding_is_exact_past_the_context_precision() -> None:
    """More digits than DECIMAL_CONTEXT holds: still one exact rounding, no Inexact."""
    just_past_the_tie = Decimal("0.125" + "0" * 60 + "1")
    assert to_minor_units(just_past_the_tie, "USD") == 13
    assert to_minor_units(-just_past_the_tie, "USD") == -13
    assert to_minor_units(Decimal("0.124" + "9" * 60), "USD") == 12


def test_the_context_refuses_to_round_silently() -> None:
    price = parse_unit_price("999999999999999999.999999999999", field="price")
    exact = scaled((10**30 - 1) * (10**10 - 1), 12)  # 40 digits
    assert DECIMAL_CONTEXT.multiply(price, 10**10 - 1) == exact
    with pytest.raises(decimal.Inexact):
        DECIMAL_CONTEXT.multiply(price, 10**11 - 1)
    with pytest.raises(decimal.DivisionByZero):
        DECIMAL_CONTEXT.divide(price, 0)

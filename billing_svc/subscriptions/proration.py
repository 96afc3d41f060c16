"""Proration: credit and charge lines for a change in the middle of a paid-in-advance period.

Tally prorates to the second (DESIGN.md). When the fees of a subscription change
at instant `at` inside a period that was billed in advance:

- every old fee gets a credit line for its unused time [at, end), and every new
  fee a charge line for the remaining time [at, end): the same slice, so a
  credit and the charge of the same fee are exact negations of each other;
- a line's amount is the fee's exact amount times seconds(end - at) over
  seconds(end - start), a Fraction, rounded once to minor units by
  core.money.fraction_to_minor_units (half away from zero); nothing is rounded
  before that, so no error accumulates;
- `at` is truncated to the whole second (boundaries are whole seconds), which
  moves it back by less than a second and gives the customer that fraction of
  a second on both lines alike;
- the seconds are real ones: a period spanning a daylight-saving change is an
  hour shorter or longer, and so its seconds are worth more or less;
- a fee that is the same before and after (same code, amount, quantity and
  description) gets no lines: its credit and charge would cancel exactly;
- lines that round to zero are left out; credits come first, in the order of
  the old fees, then charges, in the order of the new fees.

No I/O, no clock: the instant of the change is an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Final, Literal

from billing_svc.subscriptions.periods import Period
from core.money import Money, fraction_to_minor_units

_SECOND: Final = timedelta(seconds=1)

ProrationKind = Literal["credit", "charge"]
_KINDS: Final = ("credit", "charge")


def _require_decimal(value: object, what: str) -> Decimal:
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a finite Decimal, 0 or more, not {value}")
    return value


@dataclass(frozen=True, slots=True)
class Fee:
    """One recurring charge billed in advance for a whole period, as pricing computed it."""

    code: str  # identifies the fee across a change: "base", "seats:<price code>"
    description: str
    amount: Decimal  # exact major units for the whole period at this quantity
    quantity: Decimal  # 1 for a base fee, the seats for a per-seat fee; shown, not multiplied

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not self.code:
            raise ValueError("a fee needs a non-empty code")
        if not isinstance(self.description, str):
            raise TypeError(f"description must be a str, not {type(self.description).__name__}")
        # A negative fee would turn its credit into a charge; discounts are lines of their own.
        _require_decimal(self.amount, "amount")
        _require_decimal(self.quantity, "quantity")


@dataclass(frozen=True, slots=True)
class ProrationLine:
    """A prorated slice [start, end) of one fee: a credit (negative) or a charge."""

    kind: ProrationKind
    fee_code: str
    description: str
    start: datetime
    end: datetime
    fraction: Fraction  # seconds(end - start) / seconds(period)
    amount_minor: int  # rounded once; negative for a credit
    quantity: Decimal
    currency_code: str

    def __post_init__(self) -> None:
        # A known currency and an amount within int64, checked where the line arises.
        Money(self.currency_code, self.amount_minor)

    @property
    def money(self) -> Money:
        return Money(self.currency_code, self.amount_minor)


def _whole_second(instant: datetime) -> datetime:
    if not isinstance(instant, datetime):
        raise TypeError(f"at must be a datetime, not {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("at must be timezone-aware")
    return instant.astimezone(UTC).replace(microsecond=0)


def remaining_fraction(period: Period, at: datetime) -> Fraction:
    """The share of `period` left at `at`: seconds(end - at) / seconds(end - start), in (0, 1].

    `at` is truncated to the second first. ValueError unless start <= at < end.
    """
    if not isinstance(period, Period):
        raise TypeError(f"period must be a Period, not {type(period).__name__}")
    truncated = _whole_second(at)
    if not period.contains(at):
        raise ValueError(f"{at} is not within the period [{period.start}, {period.end})")
    return Fraction((period.end - truncated) // _SECOND, period.seconds)


def prorate(
    fee: Fee, period: Period, at: datetime, *, kind: ProrationKind, currency_code: str
) -> ProrationLine:
    """The line crediting (unused time) or charging (remaining time) `fee` from `at` to the period's end."""
    if not isinstance(fee, Fee):
        raise TypeError(f"fee must be a Fee, not {type(fee).__name__}")
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'credit' or 'charge', not {kind!r}")
    fraction = remaining_fraction(period, at)
    exact = Fraction(fee.amount) * fraction
    amount_minor = fraction_to_minor_units(-exact if kind == "credit" else exact, currency_code)
    return ProrationLine(
        kind=kind,
        fee_code=fee.code,
        description=fee.description,
        start=_whole_second(at),
        end=period.end,
        fraction=fraction,
        amount_minor=amount_minor,
        quantity=fee.quantity,
        currency_code=currency_code,
    )


def _by_code(fees: Sequence[Fee], side: str) -> dict[str, Fee]:
    found: dict[str, Fee] = {}
    for fee in fees:
        if not isinstance(fee, Fee):
            raise TypeError(f"{side} fees must be Fee, not {type(fee).__name__}")
        if fee.code in found:
            raise ValueError(f"fee code {fee.code!r} appears twice among the {side} fees")
        found[fee.code] = fee
    return found


def change_lines(
    old: Sequence[Fee], new: Sequence[Fee], period: Period, at: datetime, currency_code: str
) -> list[ProrationLine]:
    """The lines for replacing the `old` fees by the `new` ones at `at` within `period`.

    Credits for the old fees' unused time, then charges for the new fees' remaining
    time, each rounded once; unchanged fees and zero lines are left out.
    """
    remaining_fraction(period, at)  # the instant must be in the period even when no fee changes
    before, after = _by_code(old, "old"), _by_code(new, "new")
    credits = [
        prorate(fee, period, at, kind="credit", currency_code=currency_code)
        for fee in before.values()
        if after.get(fee.code) != fee
    ]
    charges = [
        prorate(fee, period, at, kind="charge", currency_code=currency_code)
        for fee in after.values()
        if before.get(fee.code) != fee
    ]
    return [line for line in (*credits, *charges) if line.amount_minor != 0]

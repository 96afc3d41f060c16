"""The usage lines of a cycle invoice, billed in arrears for the period its boundary closed. No I/O.

Pricing is GetUsageSummary's (billing_svc.usage.summary.plan_charge, on billing_svc.catalog.pricing):
one line per metered charge of the plan, its exact amount rounded once, half-up; a quantity model's
line carries its tier breakdown (`tiers`, exact, before the rounding), a per-unit line its unit
price. A negative net quantity (corrections exceeding usage) is billed as 0. Records sent with
their own `price_per_unit` are one more line per meter (sum of units x price, rounded once), for the
records this subscription bills (billing_svc.usage.period_usage): on the meters its plan charges,
and on meters no live subscription charges while it is the account's oldest live one. A period
invoice (CreateInvoice with a period) bills the account's other records with their own price, those
outside every subscription's live time, with the same line (`recorded_line`).

Then the plan's spend bounds: the minimum and maximum spend bound the plan's metered charges of the
period (not the fees in advance, not the recorded-price lines). The lines' rounded total goes to
`pricing.bounded_total`; an adjustment is one MINIMUM_SPEND line, positive to true up to the
minimum, negative to cap at the maximum, so the charges and their adjustment come to the bound
exactly. A period without any usage still owes its minimum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing_svc.catalog import pricing
from billing_svc.catalog.domain import Meter, MeteredCharge, PlanTerms
from billing_svc.invoices.domain import USAGE_KINDS, InvoiceLine, LineKind, LineTier, UsageBasis
from billing_svc.usage.summary import plan_charge, recorded_charge
from core.money import DECIMAL_CONTEXT, Money

_ZERO = Decimal(0)


def _plain(value: Decimal) -> Decimal:
    """Without trailing zeros (PostgreSQL's NUMERIC(38, 12) gives 40.000000000000 for 40), exactly:
    the context traps Inexact."""
    return DECIMAL_CONTEXT.normalize(value) if value else _ZERO


@dataclass(frozen=True)
class ChargeUsage:
    """One metered charge of the plan and its meter's quantity over the period."""

    meter: Meter
    charge: MeteredCharge
    quantity: Decimal
    transactions: tuple[Decimal, ...] = ()  # each record's units, for a Percentage charge


@dataclass(frozen=True)
class RecordedUsage:
    """A meter's records with their own price over the period."""

    meter: Meter
    units: Decimal
    amount: Decimal  # sum of units x price_per_unit, exact


@dataclass(frozen=True)
class PeriodUsage:
    """What the usage read side found for a usage basis."""

    terms: PlanTerms
    charges: tuple[ChargeUsage, ...]
    recorded: tuple[RecordedUsage, ...] = ()


def charge_line(
    usage: ChargeUsage, basis: UsageBasis, currency_code: str, *, subscription_id: str, line_id: str
) -> InvoiceLine:
    """The charge priced as GetUsageSummary prices it (the same function: an invoice and the summary
    of its period agree), with the tier breakdown of a quantity model."""
    price = usage.charge.price
    priced = plan_charge(usage.meter, usage.charge, usage.quantity, usage.transactions, currency_code)
    quantity = _plain(max(usage.quantity, _ZERO))
    tiers: tuple[LineTier, ...] = ()
    if not isinstance(price, pricing.Percentage):
        tiers = tuple(
            LineTier(p.tier_index, _plain(p.units), p.unit_price, p.flat_fee, _plain(p.amount))
            for p in pricing.breakdown(price, quantity)
        )
    return InvoiceLine(
        id=line_id,
        kind=LineKind.USAGE,
        description=priced.description,
        quantity=quantity,
        unit_price=price.unit_price if isinstance(price, pricing.PerUnit) else None,
        amount_minor=priced.amount.amount_minor,
        period_start=basis.period_start,
        period_end=basis.period_end,
        subscription_id=subscription_id,
        meter_id=usage.meter.id,
        tiers=tiers,
    )


def _major(money: Money | None) -> Decimal | None:
    return None if money is None else money.to_decimal()


def spend_adjustment(charges_minor: int, terms: PlanTerms, currency_code: str) -> int:
    """The minor units that bring the plan's rounded charges to its minimum (positive) or maximum
    (negative) spend; 0 within the bounds."""
    total = Money(currency_code, charges_minor).to_decimal()
    _, adjustment = pricing.bounded_total(
        total, minimum=_major(terms.minimum_spend), maximum=_major(terms.maximum_spend)
    )
    return pricing.line_minor_units(adjustment, currency_code)


def usage_lines(
    found: PeriodUsage,
    basis: UsageBasis,
    currency_code: str,
    *,
    subscription_id: str,
    new_line_id: Callable[[], str],
) -> list[InvoiceLine]:
    """Every usage line of the period, then the spend adjustment, if any."""
    lines = [
        charge_line(usage, basis, currency_code, subscription_id=subscription_id, line_id=new_line_id())
        for usage in found.charges
    ]
    adjustment = spend_adjustment(sum(line.amount_minor for line in lines), found.terms, currency_code)
    period = (basis.period_start, basis.period_end)
    lines += [
        recorded_line(usage, period, currency_code, subscription_id=subscription_id, line_id=new_line_id())
        for usage in found.recorded
    ]
    if adjustment:
        lines.append(
            InvoiceLine(
                id=new_line_id(),
                kind=LineKind.MINIMUM_SPEND,
                description="Minimum spend true-up" if adjustment > 0 else "Maximum spend cap",
                quantity=Decimal(1),
                unit_price=None,
                amount_minor=adjustment,
                period_start=basis.period_start,
                period_end=basis.period_end,
                subscription_id=subscription_id,
            )
        )
    return lines


def recorded_line(
    usage: RecordedUsage,
    period: tuple[datetime, datetime],
    currency_code: str,
    *,
    subscription_id: str,
    line_id: str,
) -> InvoiceLine:
    """The meter's records with their own price over `period` as one line: quantity their units, amount
    their exact sum of units x price rounded once, half-up. A cycle invoice's (for the records its
    subscription bills) and a period invoice's (for the records no subscription bills) alike."""
    priced = recorded_charge(usage.meter, usage.units, usage.amount, currency_code)
    return InvoiceLine(
        id=line_id,
        kind=LineKind.USAGE,
        description=priced.description,
        quantity=_plain(usage.units),
        unit_price=None,
        amount_minor=priced.amount.amount_minor,
        period_start=period[0],
        period_end=period[1],
        subscription_id=subscription_id,
        meter_id=usage.meter.id,
    )


def without_usage(lines: Sequence[InvoiceLine]) -> tuple[InvoiceLine, ...]:
    """The lines that are not made from the usage basis (the fees, the prorations)."""
    return tuple(line for line in lines if line.kind not in USAGE_KINDS)

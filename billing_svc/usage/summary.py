"""A usage summary as the business sees it: each meter's quantity over a range, priced. No I/O.

Pricing follows the invoice's rules (billing_svc.catalog.pricing): each charge is computed
exactly and rounded once, half-up, to minor units; the total is the sum of the rounded charges,
as an invoice's total is the sum of its lines. A plan charge prices the meter's quantity of the
records without their own price (a negative net quantity, corrections exceeding usage, is
priced as 0); a Percentage charge prices each such record's units as one transaction, in
(event_time, id) order. The records with their own `price_per_unit` are one more charge per
meter: sum(units x price), exact, rounded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing_svc.catalog import pricing
from billing_svc.catalog.domain import Aggregation, Meter, MeteredCharge
from core.money import Money


@dataclass(frozen=True)
class UsageCharge:
    description: str
    quantity: Decimal
    amount: Money
    recorded_prices: bool = False


@dataclass(frozen=True)
class MeterUsage:
    meter_id: str
    service: str
    aggregation: Aggregation
    quantity: Decimal  # of the records the plan prices
    record_count: int
    charges: tuple[UsageCharge, ...]


@dataclass(frozen=True)
class UsageSummary:
    account_id: str
    start_time: datetime
    end_time: datetime
    subscription_id: str  # "" when no subscription covers the range
    meters: tuple[MeterUsage, ...]
    total: Money | None  # None without a subscription and without priced records
    read_time: datetime


def plan_charge(
    meter: Meter, charge: MeteredCharge, quantity: Decimal, transactions: Sequence[Decimal], currency: str
) -> UsageCharge:
    """One plan charge on the meter, as the invoice will show it."""
    description = charge.description or meter.display_name
    if isinstance(charge.price, pricing.Percentage):
        amount = pricing.percentage_amount(charge.price, [max(units, Decimal(0)) for units in transactions])
    else:
        amount = pricing.amount_for(charge.price, max(quantity, Decimal(0)))
    return UsageCharge(description, quantity, Money(currency, pricing.line_minor_units(amount, currency)))


def recorded_charge(meter: Meter, units: Decimal, amount: Decimal, currency: str) -> UsageCharge:
    """The meter's records priced at their own price_per_unit."""
    minor = pricing.line_minor_units(amount, currency)
    return UsageCharge(f"{meter.display_name} (recorded prices)", units, Money(currency, minor), True)


def summary_total(meters: Sequence[MeterUsage], currency: str, *, always: bool) -> Money | None:
    """The sum of every charge; None when there is none, unless `always` (a plan priced the range)."""
    charges = [charge for meter in meters for charge in meter.charges]
    if not charges and not always:
        return None
    return Money(currency, sum(charge.amount.amount_minor for charge in charges))

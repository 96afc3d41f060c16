"""A cycle invoice's usage lines, billed in arrears, without I/O (billing_svc.invoices.usage_lines).

The graduated example is Lago's (https://getlago.com/docs/guide/plans/charges/charge-models/graduated):
$1 a unit for the first 100, $0.50 for the next 100, $0.10 beyond.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal

from billing_svc.catalog.domain import (
    Aggregation,
    BillingInterval,
    IntervalUnit,
    Meter,
    MeteredCharge,
    PlanTerms,
)
from billing_svc.catalog.pricing import Graduated, Percentage, PerUnit, Tier
from billing_svc.invoices.domain import InvoiceLine, LineKind, LineTier, UsageBasis
from billing_svc.invoices.usage_lines import (
    ChargeUsage,
    PeriodUsage,
    RecordedUsage,
    spend_adjustment,
    usage_lines,
    without_usage,
)
from core.money import Money

T0 = datetime(2027, 3, 1, tzinfo=UTC)
T1 = datetime(2027, 4, 1, tzinfo=UTC)
BASIS = UsageBasis("plan_1", 1, T0, T1)
API = Meter("mtr_1", "api", "API calls", "call", Aggregation.SUM, "", T0, T0, None, 1)
SMS = Meter("mtr_2", "sms", "SMS", "message", Aggregation.COUNT, "", T0, T0, None, 1)
LAGO = Graduated(
    (Tier(Decimal(100), Decimal(1)), Tier(Decimal(200), Decimal("0.50")), Tier(None, Decimal("0.10")))
)


def terms(minimum: int | None = None, maximum: int | None = None, currency: str = "USD") -> PlanTerms:
    return PlanTerms(
        interval=BillingInterval(IntervalUnit.MONTH, 1),
        trial_days=0,
        base_fee=None,
        seat_price=None,
        metered_charges=(),
        minimum_spend=None if minimum is None else Money(currency, minimum),
        maximum_spend=None if maximum is None else Money(currency, maximum),
        requires_payment=False,
    )


def lines_for(found: PeriodUsage) -> list[InvoiceLine]:
    counter = itertools.count(1)
    return usage_lines(
        found, BASIS, "USD", subscription_id="sub_1", new_line_id=lambda: f"inl_{next(counter)}"
    )


def test_a_graduated_charge_is_one_line_with_its_tier_breakdown_rounded_once() -> None:
    charge = ChargeUsage(API, MeteredCharge(API.id, "", LAGO), Decimal("250.000000000000"))
    [line] = lines_for(PeriodUsage(terms(), (charge,)))
    # 100 x 1 + 100 x 0.50 + 50 x 0.10 = 155.00
    assert (line.kind, line.description, line.quantity, line.unit_price) == (
        LineKind.USAGE,
        "API calls",
        Decimal(250),
        None,
    )
    assert format(line.quantity, "f") == "250"  # no trailing zeros from NUMERIC(38, 12)
    assert line.amount_minor == 15500
    assert line.tiers == (
        LineTier(0, Decimal(100), Decimal(1), Decimal(0), Decimal(100)),
        LineTier(1, Decimal(100), Decimal("0.50"), Decimal(0), Decimal(50)),
        LineTier(2, Decimal(50), Decimal("0.10"), Decimal(0), Decimal(5)),
    )
    assert (line.period_start, line.period_end, line.meter_id, line.subscription_id) == (
        T0,
        T1,
        API.id,
        "sub_1",
    )


def test_a_per_unit_charge_shows_its_unit_price_and_a_negative_quantity_bills_zero() -> None:
    price = PerUnit(Decimal("0.0333"))
    [line] = lines_for(
        PeriodUsage(terms(), (ChargeUsage(SMS, MeteredCharge(SMS.id, "Texts", price), Decimal(3)),))
    )
    assert (line.description, line.unit_price, line.amount_minor) == (
        "Texts",
        Decimal("0.0333"),
        10,
    )  # 0.0999
    [zero] = lines_for(
        PeriodUsage(terms(), (ChargeUsage(SMS, MeteredCharge(SMS.id, "", price), Decimal(-4)),))
    )
    assert (zero.quantity, zero.amount_minor) == (Decimal(0), 0)


def test_a_percentage_charge_has_no_tiers_and_prices_each_transaction() -> None:
    price = Percentage(Decimal(2), Decimal("0.10"), free_events=1)  # 100 free, 50 -> 1.10, 10 -> 0.30
    usage = ChargeUsage(
        API, MeteredCharge(API.id, "Fees", price), Decimal(160), (Decimal(100), Decimal(50), Decimal(10))
    )
    [line] = lines_for(PeriodUsage(terms(), (usage,)))
    assert (line.amount_minor, line.tiers, line.unit_price) == (140, (), None)


def test_the_minimum_trues_up_the_charges_and_the_maximum_caps_them() -> None:
    charge = ChargeUsage(API, MeteredCharge(API.id, "", LAGO), Decimal(40))  # 40.00
    low = lines_for(PeriodUsage(terms(minimum=6000), (charge,)))
    assert [(line.kind, line.amount_minor) for line in low] == [
        (LineKind.USAGE, 4000),
        (LineKind.MINIMUM_SPEND, 2000),
    ]
    assert low[1].description == "Minimum spend true-up" and sum(line.amount_minor for line in low) == 6000
    high = lines_for(PeriodUsage(terms(maximum=3000), (charge,)))
    assert [(line.kind, line.amount_minor, line.description) for line in high][1] == (
        LineKind.MINIMUM_SPEND,
        -1000,
        "Maximum spend cap",
    )
    inside = lines_for(PeriodUsage(terms(minimum=1000, maximum=5000), (charge,)))
    assert [line.kind for line in inside] == [LineKind.USAGE]


def test_a_period_without_usage_still_owes_its_minimum() -> None:
    [true_up] = lines_for(PeriodUsage(terms(minimum=6000), ()))
    assert (true_up.kind, true_up.amount_minor, true_up.period_start) == (LineKind.MINIMUM_SPEND, 6000, T0)


def test_the_bounds_cover_the_plan_charges_not_the_recorded_prices() -> None:
    charge = ChargeUsage(API, MeteredCharge(API.id, "", LAGO), Decimal(10))  # 10.00
    recorded = RecordedUsage(SMS, Decimal("1003.333"), Decimal("2.7165"))  # 2.72, its own price
    lines = lines_for(PeriodUsage(terms(minimum=2000), (charge,), (recorded,)))
    assert [(line.kind, line.description, line.amount_minor) for line in lines] == [
        (LineKind.USAGE, "API calls", 1000),
        (LineKind.USAGE, "SMS (recorded prices)", 272),
        (LineKind.MINIMUM_SPEND, "Minimum spend true-up", 1000),
    ]


def test_spend_adjustment_is_exact_in_minor_units() -> None:
    assert spend_adjustment(4999, terms(minimum=5000), "USD") == 1
    assert spend_adjustment(5001, terms(maximum=5000), "USD") == -1
    assert (
        spend_adjustment(7, terms(minimum=100, currency="JPY"), "JPY") == 93
    )  # JPY has no minor unit: 100 yen


def test_without_usage_keeps_the_fees_and_prorations_in_order() -> None:
    fee = InvoiceLine("inl_a", LineKind.SUBSCRIPTION_FEE, "Fee", Decimal(1), Decimal(20), 2000)
    usage = InvoiceLine("inl_b", LineKind.USAGE, "API", Decimal(3), None, 300)
    true_up = InvoiceLine("inl_c", LineKind.MINIMUM_SPEND, "Min", Decimal(1), None, 100)
    proration = InvoiceLine("inl_d", LineKind.PRORATION, "Credit", Decimal(1), None, -50)
    assert without_usage([fee, usage, true_up, proration]) == (fee, proration)

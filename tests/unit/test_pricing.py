"""Pricing models: worked examples from public billing docs, and one test per rule Tally decided.

Each worked example reproduces the numbers its page states; the comment above it gives the
URL and, where the page writes integer tier ranges ("1-5, 6-10, 11+"), how they map onto
Tally's inclusive up_to (5, 10, None): the same tiers for whole quantities, and no gap for a
decimal one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import pytest

from billing_svc.catalog.pricing import (
    Graduated,
    Package,
    Percentage,
    PerUnit,
    PricingModel,
    QuantityModel,
    Tier,
    Volume,
    amount_for,
    bounded_total,
    breakdown,
    line_minor_units,
    percentage_amount,
    percentage_event_fees,
    validate,
    validate_spend_bounds,
)
from core.errors import InvalidArgument

D = Decimal


def tiers(*rows: tuple[str | None, str] | tuple[str | None, str, str]) -> tuple[Tier, ...]:
    """Tiers from (up_to, unit_price[, flat_fee]) strings; None is the unbounded last tier."""
    return tuple(
        Tier(None if row[0] is None else D(row[0]), *(D(value) for value in row[1:])) for row in rows
    )


@dataclass(frozen=True)
class Example:
    model: QuantityModel
    quantity: str
    amount: str  # exact, major units, as the page states it


# https://stripe.com/docs/billing/subscriptions/tiers: tiers up_to=5 $5, up_to=10 $4, up_to=15 $3,
# up_to=20 $2, up_to=inf $1 (the page labels them "1-5", "6-10", "10-15", "15-20", "20+", but
# states up_to for each, and Stripe's up_to is inclusive like Tally's).
STRIPE_TIERS = tiers(("5", "5"), ("10", "4"), ("15", "3"), ("20", "2"), (None, "1"))
# https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing: Typographic's fonts, tiers
# "1-5" 7 USD, "6-10" 6.5 USD, "11+" 6 USD, i.e. up_to 5, 10, None.
TYPOGRAPHIC = tiers(("5", "7"), ("10", "6.5"), (None, "6"))
# https://getlago.com/docs/guide/plans/charges/charge-models/volume: tiers 0-10,000 $0.0010,
# 10,001-50,000 $0.0008, 50,001-100,000 $0.0006, 100,001-∞ $0.0004, each with a $10 fixed fee;
# the integer ranges are up_to 10,000, 50,000, 100,000, None.
LAGO_VOLUME = tiers(
    ("10000", "0.0010", "10"), ("50000", "0.0008", "10"), ("100000", "0.0006", "10"), (None, "0.0004", "10")
)
# https://zuplo.com/docs/articles/monetization/pricing-models: 0-1,000 $0.10, 1,001-10,000 $0.05,
# 10,001+ $0.01, i.e. up_to 1,000, 10,000, None.
ZUPLO = tiers(("1000", "0.10"), ("10000", "0.05"), (None, "0.01"))
# https://docs.oracle.com/en/industries/financial-services/banking-virtual-account-cloud-service/14.7.5.0.0/vaccg/examples-tier-based-amount.html:
# count slabs "0 – 250", "251 – 500", "> 501"; read as up_to 250, 500, None (the page's "> 501"
# would leave 501 in no slab; its own sums put every count above 500 in the last one).
ORACLE_PER_UNIT = tiers(("250", "1"), ("500", "2"), (None, "3"))
ORACLE_FLAT = tiers(("250", "0", "10"), ("500", "0", "20"), (None, "0", "30"))

WORKED_EXAMPLES = {
    # Stripe, volume: the table "Total for volume tiered pricing" (1 $5, 5 $25, 6 $24, 20 $40, 25 $25).
    "stripe-volume-1": Example(Volume(STRIPE_TIERS), "1", "5"),
    "stripe-volume-5": Example(Volume(STRIPE_TIERS), "5", "25"),
    "stripe-volume-6": Example(Volume(STRIPE_TIERS), "6", "24"),
    "stripe-volume-20": Example(Volume(STRIPE_TIERS), "20", "40"),
    "stripe-volume-25": Example(Volume(STRIPE_TIERS), "25", "25"),
    # Stripe, graduated, same page: "the total cost for an amount of 6 is $29", 5 units at $5 and
    # 1 at $4.
    "stripe-graduated-6": Example(Graduated(STRIPE_TIERS), "6", "29"),
    # Stripe Typographic, volume: 1 -> 7 USD, 5 -> 35, 6 -> 39, 20 -> 120, 25 -> 150.
    "typographic-volume-1": Example(Volume(TYPOGRAPHIC), "1", "7"),
    "typographic-volume-5": Example(Volume(TYPOGRAPHIC), "5", "35"),
    "typographic-volume-6": Example(Volume(TYPOGRAPHIC), "6", "39"),
    "typographic-volume-20": Example(Volume(TYPOGRAPHIC), "20", "120"),
    "typographic-volume-25": Example(Volume(TYPOGRAPHIC), "25", "150"),
    # Stripe Typographic, graduated: "5 fonts result in the same charge as volume-based pricing: 35 USD".
    "typographic-graduated-5": Example(Graduated(TYPOGRAPHIC), "5", "35"),
    # https://stripe.com/docs/billing/subscriptions/quantity-transformation: $10 for every 5 users
    # "or portion thereof" (transform_quantity divide_by=5, round=up): 1, 3, 5 users $10; 6, 7 users $20.
    "stripe-package-1": Example(Package(D(5), D(10)), "1", "10"),
    "stripe-package-3": Example(Package(D(5), D(10)), "3", "10"),
    "stripe-package-5": Example(Package(D(5), D(10)), "5", "10"),
    "stripe-package-6": Example(Package(D(5), D(10)), "6", "20"),
    "stripe-package-7": Example(Package(D(5), D(10)), "7", "20"),
    # https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities: 10 USD per hour,
    # usage in minutes, rounded up: 150 minutes is charged 30 USD.
    "stripe-car-rental-150-minutes": Example(Package(D(60), D(10)), "150", "30"),
    # https://doc.getlago.com/docs/guide/plans/charges: standard model, $0.05 x 1,000 API calls = $50.
    "lago-standard": Example(PerUnit(D("0.05")), "1000", "50"),
    # Lago volume (LAGO_VOLUME above): "65,000 API calls would cost 65,000 x $0.0006 + $10 = $49".
    "lago-volume-65000": Example(Volume(LAGO_VOLUME), "65000", "49"),
    # https://getlago.com/docs/guide/plans/charges/charge-models/package: $5 per 100 units, the
    # first 100 free: 201 units cost $0 + $5 + $5 = $10.
    "lago-package-201": Example(Package(D(100), D(5), free_units=D(100)), "201", "10"),
    # https://www.chargebee.com/docs/billing/2.0/product-catalog/package-pricing: 1M tokens per
    # package at $1.25: 1,000,000 tokens $1.25; 10 tokens $1.25 (one package minimum); 1,500,000 $2.50.
    "chargebee-package-1m": Example(Package(D(1_000_000), D("1.25")), "1000000", "1.25"),
    "chargebee-package-10": Example(Package(D(1_000_000), D("1.25")), "10", "1.25"),
    "chargebee-package-1.5m": Example(Package(D(1_000_000), D("1.25")), "1500000", "2.50"),
    # Orb's price configuration page (docs.withorb.com/product-catalog/price-configuration, stored
    # at https://orb-9bba378a.mintlify.app/product-catalog/price-configuration), bulk pricing:
    # up to 10 units $0.50 each, "a total of $5.00"; more than 10 all at $0.40, "101 units total
    # would be $40.40". Orb's second tier has maximum_units 1000; Tally's last tier is unbounded,
    # which changes nothing below 1,000.
    "orb-bulk-10": Example(Volume(tiers(("10", "0.50"), (None, "0.40"))), "10", "5.00"),
    "orb-bulk-101": Example(Volume(tiers(("10", "0.50"), (None, "0.40"))), "101", "40.40"),
    # Orb, same page, package: size 10 at $0.80, "4 units will be billed as 10 and 11 units will be
    # billed at 20": one package ($0.80) and two ($1.60).
    "orb-package-4": Example(Package(D(10), D("0.80")), "4", "0.80"),
    "orb-package-11": Example(Package(D(10), D("0.80")), "11", "1.60"),
    # Zuplo (ZUPLO above): graduated 15,000 units = $100 + $450 + $50 = $600; volume 15,000 x $0.01
    # = $150; per unit 100,000 x $0.001 = $100.
    "zuplo-graduated-15000": Example(Graduated(ZUPLO), "15000", "600"),
    "zuplo-volume-15000": Example(Volume(ZUPLO), "15000", "150"),
    "zuplo-per-unit": Example(PerUnit(D("0.001")), "100000", "100"),
    # https://docs.useautumn.com/documentation/modelling-pricing/graduated-pricing: first 1,000 at
    # $0.01, 1,001-10,000 at $0.008, above at $0.005: 15,000 requests pay $107.
    "autumn-graduated-15000": Example(
        Graduated(tiers(("1000", "0.01"), ("10000", "0.008"), (None, "0.005"))), "15000", "107"
    ),
    # Oracle (ORACLE_* above): slab per unit, count 1,000 = 250 + 500 + 1,500 = 2,250 USD; variable
    # (volume) per unit 3 x 1,000 = 3,000 USD; slab without unit (a flat fee per slab reached)
    # 10 + 20 + 30 = 60 USD; variable without unit 30 USD.
    "oracle-slab-per-unit": Example(Graduated(ORACLE_PER_UNIT), "1000", "2250"),
    "oracle-variable-per-unit": Example(Volume(ORACLE_PER_UNIT), "1000", "3000"),
    "oracle-slab-flat": Example(Graduated(ORACLE_FLAT), "1000", "60"),
    "oracle-variable-flat": Example(Volume(ORACLE_FLAT), "1000", "30"),
}


@pytest.mark.parametrize("example", WORKED_EXAMPLES.values(), ids=WORKED_EXAMPLES.keys())
def test_worked_example(example: Example) -> None:
    assert amount_for(example.model, D(example.quantity)) == D(example.amount)


def test_worked_example_orb_packages_are_counted_in_the_breakdown() -> None:
    # Orb (see "orb-package-*"): 4 units bill as one package of 10, 11 units as two.
    model = Package(D(10), D("0.80"))
    assert [line.units for line in breakdown(model, D(4))] == [1]
    assert [line.units for line in breakdown(model, D(11))] == [2]


def test_worked_example_stripe_forum_flat_first_tier_with_overage_rounds_once() -> None:
    # https://insiders.stripe.dev/t/how-to-charge-for-free-overflow-tokens/2696: graduated, $4 for
    # the first 100,000 tokens (a flat tier) and $0.000065 per token after; 100,070 tokens are
    # "$4 + 70 * $0.000065 = $4.00": exactly 4.00455, one rounding to 400 cents.
    model = Graduated(tiers(("100000", "0", "4"), (None, "0.000065")))
    amount = amount_for(model, D(100_070))
    assert amount == D("4.00455")
    assert line_minor_units(amount, "USD") == 400


def test_worked_example_lago_percentage_free_events_and_amount() -> None:
    # https://getlago.com/docs/guide/plans/charges/charge-models/percentage: 1.2% + $0.10 per
    # transaction, the first 3 events or $500 free; transactions $200, $100, $100 are free, the
    # fourth ($50, total $450) is past the free events: "$0.10 x 1 event + 1.2% of $50 = $0.70".
    model = Percentage(D("1.2"), fixed_fee=D("0.10"), free_events=3, free_amount=D(500))
    events = [D(200), D(100), D(100), D(50)]
    assert percentage_event_fees(model, events) == (D(0), D(0), D(0), D("0.70"))
    assert percentage_amount(model, events) == D("0.70")


# ---------------------------------------------------------------- tier bounds


def test_tier_up_to_is_inclusive() -> None:
    model = tiers(("10", "2"), ("20", "1"), (None, "0.5"))
    assert [line.tier_index for line in breakdown(Volume(model), D(10))] == [0]
    assert amount_for(Volume(model), D(10)) == 20
    assert amount_for(Volume(model), D(20)) == 20
    assert [line.units for line in breakdown(Graduated(model), D(10))] == [10]


def test_decimal_quantity_falls_in_the_tier_containing_it_with_no_integer_gap() -> None:
    model = tiers(("10", "2"), ("20", "1"), (None, "0.5"))
    graduated = breakdown(Graduated(model), D("10.5"))
    assert [(line.tier_index, line.units) for line in graduated] == [(0, 10), (1, D("0.5"))]
    assert amount_for(Graduated(model), D("10.5")) == D("20.5")
    [volume] = breakdown(Volume(model), D("10.5"))
    assert (volume.tier_index, volume.units, volume.amount) == (1, D("10.5"), D("10.5"))


def test_graduated_first_tier_flat_fee_is_billed_at_zero_usage() -> None:
    model = Graduated(tiers(("100", "0", "20"), (None, "0.10", "5")))
    [line] = breakdown(model, D(0))
    assert (line.tier_index, line.units, line.amount) == (0, D(0), D(20))
    assert amount_for(model, D(0)) == 20


def test_volume_first_tier_flat_fee_is_billed_at_zero_usage() -> None:
    model = Volume(tiers(("100", "0.20", "20"), (None, "0.10", "5")))
    assert amount_for(model, D(0)) == 20
    assert amount_for(model, D("-0")) == 20


def test_later_tier_flat_fee_is_billed_once_usage_is_inside_it() -> None:
    model = Graduated(tiers(("10", "1"), ("20", "1", "7"), (None, "1", "100")))
    assert amount_for(model, D(10)) == 10  # at tier 0's bound: not yet inside tier 1
    assert amount_for(model, D("10.001")) == D("10.001") + 7
    assert amount_for(model, D(20)) == 20 + 7  # once, however many units are in tier 1
    assert amount_for(model, D(21)) == 21 + 7 + 100


def test_volume_bills_only_the_flat_fee_of_the_tier_reached() -> None:
    model = Volume(tiers(("10", "1", "5"), (None, "1", "7")))
    assert amount_for(model, D(10)) == 10 + 5
    assert amount_for(model, D(11)) == 11 + 7


# ---------------------------------------------------------------- package


def test_package_partial_package_rounds_up() -> None:
    model = Package(D(100), D(5))
    assert amount_for(model, D(1)) == 5
    assert amount_for(model, D(100)) == 5
    assert amount_for(model, D("100.001")) == 10
    assert amount_for(Package(D("0.5"), D(3)), D("1.2")) == 9  # decimal sizes: 3 packages


def test_package_free_units_are_subtracted_first() -> None:
    model = Package(D(100), D(5), free_units=D(50))
    assert amount_for(model, D(50)) == 0
    assert amount_for(model, D(150)) == 5  # 100 billable: one package, not two
    assert amount_for(model, D(151)) == 10


def test_package_zero_usage_costs_nothing() -> None:
    assert amount_for(Package(D(100), D(5)), D(0)) == 0
    [line] = breakdown(Package(D(100), D(5)), D(0))
    assert (line.units, line.amount) == (D(0), D(0))


# ---------------------------------------------------------------- quantities and rounding


@pytest.mark.parametrize(
    "model", [PerUnit(D(1)), Graduated(tiers((None, "1"))), Volume(tiers((None, "1"))), Package(D(1), D(1))]
)
def test_negative_quantity_is_invalid_argument_naming_the_quantity_field(model: QuantityModel) -> None:
    with pytest.raises(InvalidArgument) as caught:
        amount_for(model, D("-0.001"))
    assert [v.field for v in caught.value.violations] == ["quantity"]
    with pytest.raises(InvalidArgument) as caught:
        breakdown(model, D(-1), field="usage.quantity")
    assert [v.field for v in caught.value.violations] == ["usage.quantity"]


@pytest.mark.parametrize("quantity", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_non_finite_quantity_is_invalid_argument(quantity: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        amount_for(PerUnit(D(1)), D(quantity))
    assert [v.field for v in caught.value.violations] == ["quantity"]


def test_line_is_rounded_once_from_the_exact_sum_of_its_tiers() -> None:
    # Two tiers of half a cent each: rounded one by one they make 2 cents, the line is 1 cent.
    model = Graduated(tiers(("1", "0.005"), (None, "0.005")))
    lines = breakdown(model, D(2))
    assert sum(line_minor_units(line.amount, "USD") for line in lines) == 2
    amount = amount_for(model, D(2))
    assert amount == D("0.010")
    assert line_minor_units(amount, "USD") == 1


def test_line_minor_units_rounds_half_up_by_the_currency_exponent() -> None:
    assert line_minor_units(D("0.5"), "JPY") == 1
    assert line_minor_units(D("0.125"), "USD") == 13
    assert line_minor_units(D("0.0125"), "KWD") == 13
    assert line_minor_units(D("-0.125"), "USD") == -13


def test_amount_for_refuses_a_percentage_and_an_invalid_model() -> None:
    with pytest.raises(TypeError):
        amount_for(Percentage(D(1)), D(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="validate it first"):
        amount_for(Graduated(tiers(("10", "1"))), D(1))


# ---------------------------------------------------------------- percentage


def test_percentage_free_events_pay_neither_rate_nor_fixed_fee() -> None:
    model = Percentage(D(2), fixed_fee=D("0.30"), free_events=2)
    assert percentage_event_fees(model, [D(100), D(100), D(100)]) == (D(0), D(0), D("2.30"))


def test_percentage_free_amount_exempts_the_start_of_the_running_sum() -> None:
    model = Percentage(D(10), fixed_fee=D(1), free_amount=D(150))
    # 100 is inside the free amount (no fixed fee either); the next 100 crosses it: 50 charged.
    assert percentage_event_fees(model, [D(100), D(100), D(100)]) == (D(0), D(6), D(11))


def test_percentage_allowance_ends_at_whichever_limit_runs_out_first() -> None:
    model = Percentage(D(10), fixed_fee=D(1), free_events=5, free_amount=D(150))
    # The amount runs out at the second event although free events remain.
    assert percentage_event_fees(model, [D(100), D(100), D(10)]) == (D(0), D(6), D(2))
    # The events run out first: what is left of the free amount is forfeited (Lago's example).
    model = Percentage(D(10), fixed_fee=D(1), free_events=1, free_amount=D(1000))
    assert percentage_event_fees(model, [D(100), D(100)]) == (D(0), D(11))


def test_percentage_min_and_max_bound_the_rate_part_and_fixed_fee_together() -> None:
    model = Percentage(D("2.9"), fixed_fee=D("0.30"), min_per_event=D("0.50"), max_per_event=D(5))
    # 2.9% of 1 + 0.30 = 0.329 -> 0.50; of 10: 0.59; of 1,000: 29.30 -> 5.
    assert percentage_event_fees(model, [D(1), D(10), D(1000)]) == (D("0.50"), D("0.590"), D(5))
    # The fixed fee alone is capped too.
    assert percentage_event_fees(Percentage(D(0), fixed_fee=D(2), max_per_event=D(1)), [D(0)]) == (D(1),)


def test_percentage_minimum_does_not_apply_to_free_events() -> None:
    model = Percentage(D(1), free_events=1, min_per_event=D(1))
    assert percentage_event_fees(model, [D(10), D(10)]) == (D(0), D(1))


def test_percentage_line_is_rounded_once_from_the_exact_sum_of_its_events() -> None:
    model = Percentage(D("0.5"))  # 0.5% of $1 is half a cent
    events = [D(1), D(1), D(1)]
    assert sum(line_minor_units(fee, "USD") for fee in percentage_event_fees(model, events)) == 3
    assert percentage_amount(model, events) == D("0.015")
    assert line_minor_units(percentage_amount(model, events), "USD") == 2


def test_percentage_of_no_events_is_zero() -> None:
    assert percentage_amount(Percentage(D(1), fixed_fee=D(1)), []) == 0


@pytest.mark.parametrize("bad", [D(-1), D("NaN")])
def test_percentage_event_amount_must_be_a_non_negative_number(bad: Decimal) -> None:
    with pytest.raises(InvalidArgument) as caught:
        percentage_amount(Percentage(D(1)), [D(1), bad], field="events")
    assert [v.field for v in caught.value.violations] == ["events[1]"]


# ---------------------------------------------------------------- minimum and maximum spend


def test_minimum_spend_adds_a_true_up_adjustment() -> None:
    assert bounded_total(D("7.25"), minimum=D(10), maximum=None) == (D(10), D("2.75"))


def test_maximum_spend_caps_with_a_negative_adjustment() -> None:
    assert bounded_total(D("120.50"), minimum=D(10), maximum=D(100)) == (D(100), D("-20.50"))


def test_total_within_bounds_has_no_adjustment() -> None:
    assert bounded_total(D(50), minimum=D(10), maximum=D(100)) == (D(50), D(0))
    assert bounded_total(D(50), minimum=None, maximum=None) == (D(50), D(0))


def test_bounded_total_refuses_a_minimum_above_the_maximum() -> None:
    with pytest.raises(ValueError, match="above maximum"):
        bounded_total(D(1), minimum=D(10), maximum=D(5))
    with pytest.raises(InvalidArgument) as caught:
        validate_spend_bounds(
            D(10), D(5), minimum_field="plan.minimum_spend", maximum_field="plan.maximum_spend"
        )
    assert [v.field for v in caught.value.violations] == ["plan.maximum_spend"]


# ---------------------------------------------------------------- validation


def fields_of(call: Callable[[], object]) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        call()
    return [violation.field for violation in caught.value.violations]


INVALID_MODELS: dict[str, tuple[PricingModel, list[str]]] = {
    "no tiers": (Graduated(()), ["price.tiers"]),
    "last tier bounded": (Volume(tiers(("10", "1"), ("20", "1"))), ["price.tiers[1].up_to"]),
    "only tier bounded": (Graduated(tiers(("10", "1"))), ["price.tiers[0].up_to"]),
    "unbounded before last": (Graduated(tiers((None, "1"), (None, "1"))), ["price.tiers[0].up_to"]),
    "not increasing": (
        Graduated(tiers(("10", "1"), ("5", "1"), ("20", "1"), ("20", "1"), (None, "1"))),
        ["price.tiers[1].up_to", "price.tiers[3].up_to"],
    ),
    "negative up_to": (Volume(tiers(("-1", "1"), (None, "1"))), ["price.tiers[0].up_to"]),
    "negative price and fee": (
        Volume(tiers(("10", "1"), ("20", "-1"), (None, "1", "-0.01"))),
        ["price.tiers[1].unit_price", "price.tiers[2].flat_fee"],
    ),
    "13 places": (PerUnit(D("0.0000000000001")), ["price.unit_price"]),
    "10^18": (PerUnit(D("1E+18")), ["price.unit_price"]),
    "NaN price": (PerUnit(D("NaN")), ["price.unit_price"]),
    "infinite up_to": (Graduated(tiers(("Infinity", "1"), (None, "1"))), ["price.tiers[0].up_to"]),
    "package size zero": (Package(D(0), D(1)), ["price.size"]),
    "package negatives": (Package(D(-1), D(-1), D(-1)), ["price.size", "price.price", "price.free_units"]),
    "rate above 100": (Percentage(D("100.01")), ["price.rate"]),
    "negative rate": (Percentage(D(-1)), ["price.rate"]),
    "percentage negatives": (
        Percentage(D(1), D(-1), -1, D(-1), D(-1), D(-1)),
        [
            "price.fixed_fee",
            "price.free_events",
            "price.free_amount",
            "price.min_per_event",
            "price.max_per_event",
        ],
    ),
    "min above max": (Percentage(D(1), min_per_event=D(2), max_per_event=D(1)), ["price.max_per_event"]),
}


@pytest.mark.parametrize(("model", "fields"), INVALID_MODELS.values(), ids=INVALID_MODELS.keys())
def test_validate_names_every_bad_field(model: PricingModel, fields: list[str]) -> None:
    assert fields_of(lambda: validate(model, field="price")) == fields


def test_validate_refuses_more_than_the_maximum_number_of_tiers() -> None:
    many = (*(Tier(D(i), D(1)) for i in range(1, 101)), Tier(None, D(1)))
    assert fields_of(lambda: validate(Graduated(many), field="price")) == ["price.tiers"]
    validate(Graduated(many[-100:]), field="price")


@pytest.mark.parametrize(
    "model",
    [
        PerUnit(D("0.000000000001")),
        PerUnit(D("1.5000000000000000")),  # 16 places as written, one by value
        Graduated(tiers(("0", "0", "10"), ("10.5", "1"), (None, "0"))),  # a tier for zero usage alone
        Volume(tiers((None, "999999999999999999.999999999999"))),
        Package(D("0.001"), D(0)),
        Percentage(D(100), min_per_event=D(1), max_per_event=D(1)),
        Percentage(D(0)),
    ],
)
def test_validate_accepts(model: PricingModel) -> None:
    validate(model, field="price")


def test_validate_without_a_prefix_names_the_bare_field() -> None:
    assert fields_of(lambda: validate(PerUnit(D(-1)), field="")) == ["unit_price"]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Tier(D(1), 1.5),  # type: ignore[arg-type]
        lambda: Tier(10, D(1)),  # type: ignore[arg-type]
        lambda: Graduated([Tier(None, D(1))]),  # type: ignore[arg-type]
        lambda: Percentage(D(1), free_events=True),
        lambda: Percentage(D(1), free_events=1.0),  # type: ignore[arg-type]
    ],
)
def test_models_refuse_non_decimal_numbers(build: Callable[[], object]) -> None:
    with pytest.raises(TypeError):
        build()

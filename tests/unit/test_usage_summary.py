"""A usage summary's pricing and ListUsageRecords' property filters, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing_svc.catalog.domain import Aggregation, Meter, MeteredCharge
from billing_svc.catalog.pricing import Graduated, Percentage, PerUnit, Tier
from billing_svc.usage.read_use_cases import parse_property_filters
from billing_svc.usage.summary import MeterUsage, plan_charge, recorded_charge, summary_total
from core.errors import InvalidArgument
from core.money import Money

T = datetime(2027, 1, 1, tzinfo=UTC)
METER = Meter("mtr_1", "api", "API calls", "call", Aggregation.SUM, "", T, T, None, 1)


def test_a_plan_charge_is_described_as_the_invoice_shows_it_and_rounded_once() -> None:
    tiers = (Tier(Decimal(100), Decimal(0)), Tier(None, Decimal("0.015")))
    charge = plan_charge(METER, MeteredCharge("mtr_1", "", Graduated(tiers)), Decimal("133.3"), (), "USD")
    assert (charge.description, charge.amount) == ("API calls", Money("USD", 50))  # 0.4995 -> 0.50
    named = plan_charge(METER, MeteredCharge("mtr_1", "Calls", PerUnit(Decimal(1))), Decimal(2), (), "JPY")
    assert (named.description, named.amount, named.recorded_prices) == ("Calls", Money("JPY", 2), False)


def test_a_negative_net_quantity_is_priced_as_zero_and_kept_as_it_is() -> None:
    charge = plan_charge(METER, MeteredCharge("mtr_1", "", PerUnit(Decimal(2))), Decimal(-3), (), "USD")
    assert (charge.quantity, charge.amount) == (Decimal(-3), Money("USD", 0))


def test_a_percentage_charge_prices_each_record_as_a_transaction() -> None:
    # 2 % + 0.10 per transaction, the first free: 100 free, 50 -> 1.10, 10 -> 0.30; total 1.40.
    price = Percentage(Decimal(2), Decimal("0.10"), free_events=1)
    charge = plan_charge(
        METER,
        MeteredCharge("mtr_1", "Fees", price),
        Decimal(160),
        [Decimal(100), Decimal(50), Decimal(10)],
        "USD",
    )
    assert charge.amount == Money("USD", 140)


def test_recorded_prices_are_one_charge_and_the_total_sums_rounded_charges() -> None:
    recorded = recorded_charge(METER, Decimal("1003.333"), Decimal("2.7165"), "USD")
    assert (recorded.amount, recorded.recorded_prices) == (Money("USD", 272), True)
    usage = MeterUsage("mtr_1", "api", Aggregation.SUM, Decimal(0), 1, (recorded, recorded))
    assert summary_total([usage], "USD", always=False) == Money("USD", 544)
    empty = MeterUsage("mtr_1", "api", Aggregation.SUM, Decimal(0), 0, ())
    assert summary_total([empty], "USD", always=False) is None
    assert summary_total([empty], "USD", always=True) == Money("USD", 0)


def test_property_filters_are_key_value_items_named_by_index() -> None:
    assert parse_property_filters(["region=eu", "tier=a=b", "empty="]) == {
        "region": "eu",
        "tier": "a=b",
        "empty": "",
    }
    with pytest.raises(InvalidArgument) as caught:
        parse_property_filters(["region=eu", "novalue", "=x", 'a"b=1', "k=" + "v" * 257, "region=us"])
    assert sorted(v.field for v in caught.value.violations) == [f"properties[{i}]" for i in range(1, 6)]
    with pytest.raises(InvalidArgument) as caught:
        parse_property_filters(["a=1"] * 33)
    assert [v.field for v in caught.value.violations] == ["properties"]

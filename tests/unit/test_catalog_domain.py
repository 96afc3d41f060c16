"""The catalog's domain and rules: meters, plan versions, their validation and the stored terms JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from billing_svc.catalog import rules
from billing_svc.catalog.domain import (
    Aggregation,
    BillingInterval,
    Feature,
    IntervalUnit,
    Meter,
    MeteredCharge,
    MeterFields,
    PlanFields,
    PlanTerms,
    PlanVersion,
    SeatPrice,
    apply_terms,
    terms_from_json,
    terms_to_json,
)
from billing_svc.catalog.pricing import Graduated, Package, Percentage, PerUnit, Tier, Volume
from core.errors import InvalidArgument
from core.money import Money

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
MONTHLY = BillingInterval(IntervalUnit.MONTH, 1)


def violations(call: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        call(*args, **kwargs)
    return {v.field: v.description for v in caught.value.violations}


def meter_fields(**overrides: Any) -> MeterFields:
    values: dict[str, Any] = {
        "code": "api_calls",
        "display_name": "API calls",
        "aggregation": Aggregation.SUM,
    }
    values.update(overrides)
    return MeterFields(**values)


def plan_fields(**overrides: Any) -> PlanFields:
    values: dict[str, Any] = {
        "code": "pro",
        "display_name": "Pro",
        "currency_code": "USD",
        "billing_interval": MONTHLY,
    }
    values.update(overrides)
    return PlanFields(**values)


# --- meters --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["a", "api_calls", "storage.gb-hours", "x" * 64, "a1"])
def test_codes_that_pass(code: str) -> None:
    rules.check_new_meter(meter_fields(code=code))


@pytest.mark.parametrize("code", ["", "1a", "Api", "a b", "x" * 65, "café", "_a", "a/b", "a\u200bb"])
def test_codes_that_are_refused(code: str) -> None:
    assert set(violations(rules.check_new_meter, meter_fields(code=code))) == {"meter.code"}


def test_meter_rules() -> None:
    found = violations(
        rules.check_new_meter, meter_fields(display_name=" ", unit_label="u" * 41, aggregation=None)
    )
    assert set(found) == {"meter.display_name", "meter.unit_label", "meter.aggregation"}
    # The property is for unique counts only, and then it is required, with the rules of a code.
    assert "meter.property" in violations(rules.check_new_meter, meter_fields(property="user_id"))
    assert "meter.property" in violations(
        rules.check_new_meter, meter_fields(aggregation=Aggregation.UNIQUE_COUNT)
    )
    rules.check_new_meter(meter_fields(aggregation=Aggregation.UNIQUE_COUNT, property="user_id"))
    # A display name people read may not hide characters.
    assert "meter.display_name" in violations(
        rules.check_new_meter, meter_fields(display_name="API\u202ecalls")
    )


def test_meter_round_trips_through_its_stored_form() -> None:
    meter = Meter(
        id="mtr_x",
        code="api_calls",
        display_name="API calls",
        unit_label="call",
        aggregation=Aggregation.WEIGHTED_SUM,
        property="",
        create_time=T0,
        update_time=T0,
        archive_time=T0,
        revision=3,
    )
    assert Meter.from_dict(json.loads(json.dumps(meter.to_dict()))) == meter
    assert meter.is_archived
    assert meter.etag != replace(meter, revision=4).etag


def test_update_masks() -> None:
    def check(*paths: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return rules.check_mask(paths, updatable=("a", "b"), immutable=("code",), output_only=("id",))

    assert check("*") == (("a", "b"), ())
    assert check("b", "code", "b") == (("b",), ("code",))
    for paths in (("id",), ("colour",), ("a.sub",)):
        assert set(violations(check, *paths)) == {"update_mask"}


# --- plans ---------------------------------------------------------------------------------------


def test_a_plain_plan_passes_and_every_field_is_named() -> None:
    rules.check_new_plan(plan_fields())
    found = violations(
        rules.check_new_plan,
        plan_fields(
            code="",
            display_name="",
            description="d" * 2001,
            currency_code="usd",
            billing_interval=None,
            trial_days=-1,
        ),
    )
    assert set(found) == {
        "plan.code",
        "plan.display_name",
        "plan.description",
        "plan.currency_code",
        "plan.billing_interval.unit",
        "plan.trial_days",
    }


@pytest.mark.parametrize(
    ("unit", "most"),
    [(IntervalUnit.DAY, 1095), (IntervalUnit.WEEK, 156), (IntervalUnit.MONTH, 36), (IntervalUnit.YEAR, 3)],
)
def test_intervals_up_to_three_years(unit: IntervalUnit, most: int) -> None:
    rules.check_new_plan(plan_fields(billing_interval=BillingInterval(unit, most)))
    for count in (0, most + 1):
        found = violations(rules.check_new_plan, plan_fields(billing_interval=BillingInterval(unit, count)))
        assert set(found) == {"plan.billing_interval.count"}


def test_prices_are_validated_under_their_paths() -> None:
    bad_tiers = Graduated(
        (Tier(Decimal(10), Decimal(1)), Tier(Decimal(5), Decimal(1)), Tier(None, Decimal(1)))
    )
    fields = plan_fields(
        seat_price=SeatPrice("Seats", Volume((Tier(Decimal(5), Decimal(1)),))),
        metered_charges=(
            MeteredCharge("mtr_a", "", PerUnit(Decimal("0.5"))),
            MeteredCharge("mtr_b", "", bad_tiers),
            MeteredCharge("mtr_c", "", Package(Decimal(0), Decimal(1))),
        ),
    )
    assert set(violations(rules.check_new_plan, fields)) == {
        "plan.seat_price.price.volume.tiers[0].up_to",
        "plan.metered_charges[1].price.graduated.tiers[1].up_to",
        "plan.metered_charges[2].price.package.size",
    }


def test_percentage_is_for_metered_charges_only() -> None:
    percentage = Percentage(Decimal("2.9"), Decimal("0.30"))
    rules.check_new_plan(plan_fields(metered_charges=(MeteredCharge("mtr_a", "", percentage),)))
    found = violations(rules.check_new_plan, plan_fields(seat_price=SeatPrice("", percentage)))
    assert set(found) == {"plan.seat_price.price.percentage"}
    assert rules.percentage_meter_problem(Aggregation.SUM) is None
    assert "AGGREGATION_COUNT" in str(rules.percentage_meter_problem(Aggregation.COUNT))


def test_charges_and_features() -> None:
    charge = MeteredCharge("mtr_a", "", PerUnit(Decimal(1)))
    found = violations(
        rules.check_new_plan,
        plan_fields(
            metered_charges=(charge, MeteredCharge("", "d" * 201, PerUnit(Decimal(1))), charge),
            features=(
                Feature("sso", "", True, None),
                Feature("seats", "", None, -1),
                Feature("sso", "", None, None),
                Feature("Bad", "", True, 1),
            ),
        ),
    )
    assert set(found) == {
        "plan.metered_charges[1].meter_id",
        "plan.metered_charges[1].description",
        "plan.metered_charges[2].meter_id",
        "plan.features[0].code",
        "plan.features[1].limit",
        "plan.features[2].code",
        "plan.features[2]",
        "plan.features[3].code",
        "plan.features[3]",
    }
    assert "metered_charges[0]" in found["plan.metered_charges[2].meter_id"]
    many = tuple(MeteredCharge(f"mtr_{n}", "", PerUnit(Decimal(1))) for n in range(51))
    assert set(violations(rules.check_new_plan, plan_fields(metered_charges=many))) == {
        "plan.metered_charges"
    }


def test_amounts_are_in_the_plans_currency_and_bounded_in_order() -> None:
    found = violations(
        rules.check_new_plan, plan_fields(base_fee=Money("EUR", 100), maximum_spend=Money("JPY", 5))
    )
    assert set(found) == {"plan.base_fee.currency_code", "plan.maximum_spend.currency_code"}
    found = violations(
        rules.check_new_plan, plan_fields(minimum_spend=Money("USD", 500), maximum_spend=Money("USD", 499))
    )
    assert set(found) == {"plan.maximum_spend"}
    rules.check_new_plan(plan_fields(minimum_spend=Money("USD", 500), maximum_spend=Money("USD", 500)))
    assert set(violations(rules.check_new_plan, plan_fields(base_fee=Money("USD", -1)))) == {
        "plan.base_fee.amount_minor"
    }


def test_price_models_tell_graduated_from_volume() -> None:
    tiers = (Tier(None, Decimal(1)),)
    graduated = plan_fields(seat_price=SeatPrice("", Graduated(tiers)))
    volume = plan_fields(seat_price=SeatPrice("", Volume(tiers)))
    assert graduated.price_models() == ("graduated",)
    assert volume.price_models() == ("volume",)


def test_apply_terms_changes_only_the_named_fields() -> None:
    terms = apply_terms(None, plan_fields(trial_days=14, base_fee=Money("USD", 100)), ())
    assert (terms.trial_days, terms.base_fee, terms.interval) == (14, Money("USD", 100), MONTHLY)
    changed = apply_terms(terms, plan_fields(trial_days=0, billing_interval=None), ["base_fee"])
    assert (changed.trial_days, changed.base_fee, changed.interval) == (14, None, MONTHLY)
    weekly = BillingInterval(IntervalUnit.WEEK, 2)
    assert apply_terms(terms, plan_fields(billing_interval=weekly), ["billing_interval"]).interval == weekly


# --- terms as JSON -------------------------------------------------------------------------------


def every_kind_of_terms() -> PlanTerms:
    return PlanTerms(
        interval=BillingInterval(IntervalUnit.WEEK, 2),
        trial_days=30,
        base_fee=Money("USD", 2_900),
        seat_price=SeatPrice(
            "Seats",
            Graduated((Tier(Decimal("5"), Decimal("10.00"), Decimal("1.5")), Tier(None, Decimal("8.50")))),
        ),
        metered_charges=(
            # 12 decimal places, the most a unit price may have (core.money.parse_unit_price).
            MeteredCharge("mtr_a", "API calls", PerUnit(Decimal("0.000000000125"))),
            MeteredCharge(
                "mtr_b",
                "",
                Volume(
                    (Tier(Decimal("0"), Decimal(0)), Tier(None, Decimal("999999999999999999.999999999999")))
                ),
            ),
            MeteredCharge("mtr_c", "", Package(Decimal("100"), Decimal("5.00"), Decimal("0.5"))),
            MeteredCharge(
                "mtr_d",
                "",
                Percentage(
                    Decimal("2.9"), Decimal("0.30"), 3, Decimal("500"), Decimal("0.000000000001"), None
                ),
            ),
        ),
        minimum_spend=Money("USD", 0),
        # Minor units beyond 2^53, where a JSON reader that uses doubles would round them.
        maximum_spend=Money("USD", 2**63 - 1),
        requires_payment=True,
    )


def test_terms_round_trip_exactly_with_the_scale_kept() -> None:
    terms = every_kind_of_terms()
    stored = json.loads(json.dumps(terms_to_json(terms)))
    back = terms_from_json(stored)
    assert back == terms
    # Equal Decimals may differ in scale (1.50 == 1.5); the stored text keeps what was written.
    seat = back.seat_price
    assert seat is not None and isinstance(seat.price, Graduated)
    assert str(seat.price.tiers[0].unit_price) == "10.00"
    assert stored["metered_charges"][0]["price"] == {"per_unit": {"unit_price": "0.000000000125"}}
    assert stored["maximum_spend"] == {"currency_code": "USD", "amount_minor": str(2**63 - 1)}


def test_no_amount_in_the_stored_terms_is_a_json_number() -> None:
    text = json.dumps(terms_to_json(every_kind_of_terms()))

    def no_float(value: str) -> Any:
        raise AssertionError(f"a float in the stored terms: {value}")

    numbers: list[int] = []

    def count(value: str) -> int:
        numbers.append(int(value))
        return int(value)

    json.loads(text, parse_float=no_float, parse_int=count)
    # The only JSON numbers are counts, never amounts: the format, the interval count, the trial.
    assert sorted(numbers) == sorted([1, 2, 30])


def test_stored_terms_of_another_format_are_refused() -> None:
    stored = terms_to_json(every_kind_of_terms())
    with pytest.raises(ValueError, match="format"):
        terms_from_json({**stored, "format": 2})


def test_plan_version_round_trips_through_its_stored_form() -> None:
    plan = PlanVersion(
        plan_id="plan_x",
        version=2,
        code="pro",
        display_name="Pro",
        description="",
        currency_code="USD",
        terms=every_kind_of_terms(),
        features=(Feature("seats", "Seats", None, 5), Feature("sso", "", True, None)),
        in_use=True,
        create_time=T0,
        update_time=T0,
        archive_time=None,
        revision=4,
    )
    assert PlanVersion.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    # An etag read from another version never matches, though the plan's revision is the same.
    assert plan.etag != replace(plan, version=1).etag
    assert not plan.is_archived

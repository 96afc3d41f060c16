"""PlanService through a real in-process gRPC server, on each backend: versions, rules, listings."""

from __future__ import annotations

import grpc
import pytest

from app.server import App
from tally.billing.v1 import meter_pb2, meter_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tests.integration.test_catalog import (
    Meter,
    Plan,
    audit_rows,
    create_meter,
    create_plan,
    dec,
    events,
    graduated,
    mark_in_use,
    new_plan,
    per_unit,
    update_plan,
    usd,
)
from tests.support import details, failing


@pytest.fixture
def meters(channel: grpc.aio.Channel) -> meter_pb2_grpc.MeterServiceStub:
    return meter_pb2_grpc.MeterServiceStub(channel)


@pytest.fixture
def plans(channel: grpc.aio.Channel) -> plan_pb2_grpc.PlanServiceStub:
    return plan_pb2_grpc.PlanServiceStub(channel)


async def test_plan_with_every_kind_of_price_round_trips(
    meters: meter_pb2_grpc.MeterServiceStub, plans: plan_pb2_grpc.PlanServiceStub
) -> None:
    calls = await create_meter(meters, "api_calls")
    volume = await create_meter(meters, "payments")
    seats = plan_pb2.SeatPrice(description="Seats", price=graduated(("5", "10"), (None, "8.50")))
    charges = [
        plan_pb2.MeteredCharge(meter_id=calls.id, description="API calls", price=per_unit("0.000000000125")),
        plan_pb2.MeteredCharge(
            meter_id=volume.id,
            price=plan_pb2.Price(
                percentage=plan_pb2.PercentagePrice(
                    rate=dec("2.9"), fixed_fee=dec("0.30"), max_per_event=dec("50")
                )
            ),
        ),
    ]
    features = [
        plan_pb2.Feature(code="sso", display_name="Single sign-on", enabled=True),
        plan_pb2.Feature(code="api.rate", limit=600),
    ]
    created = await create_plan(
        plans,
        description="For teams",
        billing_interval=plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_WEEK, count=2),
        trial_days=14,
        seat_price=seats,
        metered_charges=charges,
        minimum_spend=usd(1000),
        maximum_spend=usd(100000),
        features=features,
        requires_payment=True,
    )
    assert created.id.startswith("plan_") and created.version == 1
    assert created.metered_charges[0].price.per_unit.unit_price.value == "0.000000000125"
    assert created.metered_charges[1].price.percentage.fixed_fee.value == "0.30"  # the scale is kept
    assert not created.metered_charges[1].price.percentage.HasField("min_per_event")
    assert not created.seat_price.price.graduated.tiers[1].HasField("up_to")
    assert created.billing_interval.count == 2
    assert [f.code for f in created.features] == ["api.rate", "sso"]  # features are listed by code
    assert await plans.GetPlan(plan_pb2.GetPlanRequest(id=created.id)) == created
    assert await plans.GetPlan(plan_pb2.GetPlanRequest(id=created.id, version=1)) == created

    defaulted = await create_plan(
        plans, "basic", billing_interval=plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_YEAR)
    )
    assert defaulted.billing_interval.count == 1  # 0 means 1


async def test_price_change_of_a_plan_in_use_makes_a_new_version(
    app: App, meters: meter_pb2_grpc.MeterServiceStub, plans: plan_pb2_grpc.PlanServiceStub
) -> None:
    calls = await create_meter(meters, "api_calls")
    created = await create_plan(
        plans,
        features=[plan_pb2.Feature(code="seats", limit=5)],
        metered_charges=[plan_pb2.MeteredCharge(meter_id=calls.id, price=per_unit("0.01"))],
    )
    # Nobody uses version 1 yet: prices change in place.
    in_place = await update_plan(plans, Plan(id=created.id, base_fee=usd(3900)), "base_fee")
    assert (in_place.version, in_place.base_fee.amount_minor) == (1, 3900)

    await mark_in_use(app, created.id, 1)
    renamed = await update_plan(plans, Plan(id=created.id, display_name="Pro"), "display_name")
    assert (renamed.version, renamed.display_name) == (1, "Pro")
    repriced = await update_plan(
        plans, Plan(id=created.id, base_fee=usd(4900), etag=renamed.etag), "base_fee"
    )
    assert (repriced.version, repriced.base_fee.amount_minor) == (2, 4900)
    assert [f.code for f in repriced.features] == ["seats"]  # copied from version 1
    assert repriced.metered_charges == in_place.metered_charges

    old = await plans.GetPlan(plan_pb2.GetPlanRequest(id=created.id, version=1))
    assert (old.version, old.base_fee.amount_minor, old.display_name) == (1, 3900, "Pro")
    assert old.etag != repriced.etag
    latest = await plans.GetPlan(plan_pb2.GetPlanRequest(id=created.id))
    assert latest == repriced

    # Version 2 is not in use: it changes in place, and version 1 stays as it was.
    again = await update_plan(plans, Plan(id=created.id, trial_days=7), "trial_days")
    assert (again.version, again.trial_days) == (2, 7)
    assert (await plans.GetPlan(plan_pb2.GetPlanRequest(id=created.id, version=1))).trial_days == 0

    error = await failing(plans.GetPlan(plan_pb2.GetPlanRequest(id=created.id, version=3)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert details(error).reason == "PLAN_VERSION_NOT_FOUND"

    found = [(e.type, e.payload["version"]) for e in await events(app, "plan")]
    assert found == [
        ("plan.created", 1),
        ("plan.updated", 1),
        ("plan.updated", 1),
        ("plan.version_created", 2),
        ("plan.updated", 2),
    ]
    rows = await audit_rows(app, created.id)
    assert [row.action for row in rows] == ["create", "update", "update", "update", "update"]
    assert rows[3].changes["version"] == {"before": 1, "after": 2}
    assert rows[3].changes["terms"]["after"]["base_fee"] == {"currency_code": "USD", "amount_minor": "4900"}


async def test_features_change_in_place_even_on_a_version_in_use(
    app: App, plans: plan_pb2_grpc.PlanServiceStub
) -> None:
    created = await create_plan(plans, features=[plan_pb2.Feature(code="sso", enabled=False)])
    await mark_in_use(app, created.id, 1)
    updated = await update_plan(
        plans, Plan(id=created.id, features=[plan_pb2.Feature(code="sso", enabled=True)]), "features"
    )
    assert updated.version == 1 and updated.features[0].enabled
    # Features and prices in one request: the features change on version 1, which its
    # subscribers see at once, and version 2 starts with them.
    both = await update_plan(
        plans,
        Plan(id=created.id, base_fee=usd(100), features=[plan_pb2.Feature(code="sso", limit=3)]),
        "features",
        "base_fee",
    )
    assert both.version == 2 and both.features[0].limit == 3
    old = await plans.GetPlan(plan_pb2.GetPlanRequest(id=created.id, version=1))
    assert old.features[0].limit == 3 and old.base_fee.amount_minor == 2900


async def test_plan_code_taken_request_ids_and_etags(app: App, plans: plan_pb2_grpc.PlanServiceStub) -> None:
    first = await create_plan(
        plans, request_id="plan-1", seat_price=plan_pb2.SeatPrice(price=graduated((None, "5")))
    )
    assert (
        await create_plan(
            plans, request_id="plan-1", seat_price=plan_pb2.SeatPrice(price=graduated((None, "5")))
        )
        == first
    )
    # Volume and graduated tiers have the same fields: still two different requests.
    volume = plan_pb2.Price(volume=graduated((None, "5")).graduated)
    error = await failing(
        create_plan(plans, request_id="plan-1", seat_price=plan_pb2.SeatPrice(price=volume))
    )
    assert details(error).reason == "REQUEST_ID_REUSED"

    error = await failing(create_plan(plans, display_name="Another"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(error).reason == "PLAN_CODE_TAKEN"

    updated = await update_plan(plans, Plan(id=first.id, description="new"), "description", request_id="u-1")
    assert (
        await update_plan(plans, Plan(id=first.id, description="new"), "description", request_id="u-1")
        == updated
    )
    error = await failing(
        update_plan(plans, Plan(id=first.id, description="stale", etag=first.etag), "description")
    )
    assert error.code() == grpc.StatusCode.ABORTED
    assert details(error).reason == "ETAG_MISMATCH"
    assert [e.type for e in await events(app, "plan")] == ["plan.created", "plan.updated"]

    error = await failing(plans.GetPlan(plan_pb2.GetPlanRequest(id="plan_00000000000000000000000000")))
    assert details(error).reason == "PLAN_NOT_FOUND"
    error = await failing(plans.GetPlan(plan_pb2.GetPlanRequest(id=first.id, version=-1)))
    assert "version" in details(error).violations


async def test_bad_plans_name_the_fields(
    meters: meter_pb2_grpc.MeterServiceStub, plans: plan_pb2_grpc.PlanServiceStub
) -> None:
    calls = await create_meter(meters, "api_calls", aggregation=Meter.AGGREGATION_COUNT)
    error = await failing(
        create_plan(
            plans,
            "Pro",
            display_name="",
            billing_interval=plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_MONTH, count=37),
            trial_days=731,
            base_fee=usd(100, "EUR"),
            seat_price=plan_pb2.SeatPrice(
                price=plan_pb2.Price(percentage=plan_pb2.PercentagePrice(rate=dec("1")))
            ),
            metered_charges=[
                plan_pb2.MeteredCharge(meter_id=calls.id, price=per_unit("1")),
                plan_pb2.MeteredCharge(
                    meter_id=calls.id, price=graduated(("10", "1"), ("5", "1"), (None, "1"))
                ),
            ],
            features=[plan_pb2.Feature(code="sso", enabled=True), plan_pb2.Feature(code="sso")],
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(error).violations) == {
        "plan.code",
        "plan.display_name",
        "plan.billing_interval.count",
        "plan.trial_days",
        "plan.seat_price.price.percentage",
        "plan.metered_charges[1].meter_id",
        "plan.metered_charges[1].price.graduated.tiers[1].up_to",
        "plan.features[0].code",
        "plan.features[1].code",
        "plan.features[1]",
    }

    # However many fields are wrong, the error fits its trailers: the first 20 are named.
    many = [plan_pb2.Feature(code="a", enabled=True) for _ in range(100)]
    error = await failing(create_plan(plans, features=many))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details(error).violations) == 20

    error = await failing(create_plan(plans, base_fee=usd(100, "EUR")))
    assert set(details(error).violations) == {"plan.base_fee.currency_code"}
    error = await failing(create_plan(plans, minimum_spend=usd(500), maximum_spend=usd(100)))
    assert set(details(error).violations) == {"plan.maximum_spend"}
    error = await failing(
        create_plan(plans, billing_interval=plan_pb2.BillingInterval(), currency_code="XYZ")
    )
    assert set(details(error).violations) == {"plan.billing_interval.unit", "plan.currency_code"}

    # What cannot be decoded is named with the decimal's `value`, every one at once.
    error = await failing(
        create_plan(
            plans,
            metered_charges=[
                plan_pb2.MeteredCharge(meter_id=calls.id, price=per_unit("1e3")),
                plan_pb2.MeteredCharge(meter_id=calls.id, price=plan_pb2.Price()),
                plan_pb2.MeteredCharge(meter_id=calls.id, price=per_unit("0.0000000000001")),
            ],
        )
    )
    assert set(details(error).violations) == {
        "plan.metered_charges[0].price.per_unit.unit_price.value",
        "plan.metered_charges[1].price",
        "plan.metered_charges[2].price.per_unit.unit_price.value",
    }

    error = await failing(
        create_plan(
            plans,
            metered_charges=[
                plan_pb2.MeteredCharge(meter_id="mtr_00000000000000000000000000", price=per_unit("1"))
            ],
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(error).violations) == {"plan.metered_charges[0].meter_id"}
    percentage = plan_pb2.Price(percentage=plan_pb2.PercentagePrice(rate=dec("2.9")))
    error = await failing(
        create_plan(plans, metered_charges=[plan_pb2.MeteredCharge(meter_id=calls.id, price=percentage)])
    )
    assert "AGGREGATION_SUM" in details(error).violations["plan.metered_charges[0].price.percentage"]


async def test_archived_meters_and_update_masks(
    meters: meter_pb2_grpc.MeterServiceStub, plans: plan_pb2_grpc.PlanServiceStub
) -> None:
    kept = await create_meter(meters, "kept")
    created = await create_plan(
        plans, metered_charges=[plan_pb2.MeteredCharge(meter_id=kept.id, price=per_unit("1"))]
    )
    await meters.ArchiveMeter(meter_pb2.ArchiveMeterRequest(id=kept.id))
    archived = await create_meter(meters, "gone")
    await meters.ArchiveMeter(meter_pb2.ArchiveMeterRequest(id=archived.id))

    error = await failing(
        create_plan(
            plans,
            "other",
            metered_charges=[plan_pb2.MeteredCharge(meter_id=archived.id, price=per_unit("1"))],
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = details(error)
    assert (
        found.reason == "METER_ARCHIVED"
        and found.info.metadata["field"] == "plan.metered_charges[0].meter_id"
    )

    # A plan that already charges for an archived meter keeps the charge through other changes.
    repriced = await update_plan(
        plans,
        Plan(id=created.id, metered_charges=[plan_pb2.MeteredCharge(meter_id=kept.id, price=per_unit("2"))]),
        "metered_charges",
    )
    assert repriced.metered_charges[0].price.per_unit.unit_price.value == "2"

    for paths, field in (
        ((), "update_mask"),
        (("version",), "update_mask"),
        (("seat_price.description",), "update_mask"),
        (("shoe_size",), "update_mask"),
    ):
        error = await failing(update_plan(plans, Plan(id=created.id), *paths))
        assert field in details(error).violations, paths
    error = await failing(update_plan(plans, Plan(id=created.id, currency_code="EUR"), "currency_code"))
    assert "plan.currency_code" in details(error).violations
    same = await update_plan(
        plans, Plan(id=created.id, code=created.code, display_name="Same code"), "code", "display_name"
    )
    assert same.code == created.code
    # `*` replaces everything: an unset base fee is removed.
    everything = new_plan(created.code, display_name="All", base_fee=None)
    everything.id = created.id
    replaced = await update_plan(plans, everything, "*")
    assert not replaced.HasField("base_fee") and not replaced.metered_charges


async def test_plan_listing_and_archiving(app: App, plans: plan_pb2_grpc.PlanServiceStub) -> None:
    created = [await create_plan(plans, f"plan-{n}") for n in range(4)]
    archived = await plans.ArchivePlan(plan_pb2.ArchivePlanRequest(id=created[2].id, request_id="archive-2"))
    assert archived.HasField("archive_time")
    assert await plans.ArchivePlan(plan_pb2.ArchivePlanRequest(id=created[2].id)) == archived
    await mark_in_use(app, created[0].id, 1)
    newer = await update_plan(plans, Plan(id=created[0].id, trial_days=30), "trial_days")
    assert newer.version == 2

    seen: list[Plan] = []
    token = ""
    while True:
        page = await plans.ListPlans(plan_pb2.ListPlansRequest(page_size=2, page_token=token))
        seen += page.plans
        token = page.next_page_token
        if not token:
            break
    assert [plan.id for plan in seen] == [created[n].id for n in (0, 1, 3)]
    assert seen[0] == newer  # each plan at its latest version
    everything = await plans.ListPlans(plan_pb2.ListPlansRequest(show_archived=True))
    assert [plan.id for plan in everything.plans] == [plan.id for plan in created]
    assert [e.type for e in await events(app, "plan") if e.type == "plan.archived"] == ["plan.archived"]
    assert [row.action for row in await audit_rows(app, created[2].id)] == ["create", "archive"]

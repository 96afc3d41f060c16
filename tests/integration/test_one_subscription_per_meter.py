"""One meter, one subscription per account (billing_svc/subscriptions/meters.py), through the real server.

Usage is recorded per account, so two subscriptions of one account charging the same meter would
both bill it. Lago avoids this by attributing every event to one subscription
(`external_subscription_id`, mandatory since its v1.2.0:
https://www.getlago.com/changelog/upcoming-api-changes-v1-2-0); Tally records usage per account and
refuses the second subscription instead: FAILED_PRECONDITION (METER_ALREADY_CHARGED) naming the
meter and the subscription that charges it, over gRPC and REST, with nothing written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import grpc
import pytest
from google.type import decimal_pb2

from app.server import App
from tally.billing.v1 import meter_pb2, meter_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as pb
from tally.subscription.v1.subscription_pb2_grpc import SubscriptionServiceStub
from tests.billing_support import MONTH, new_account, new_plan, usd
from tests.integration.test_concurrency import lock_waiters, row_locked
from tests.integration.test_gateway import Gateway, bearer, call, detail
from tests.support import asyncpg_dsn, channel_as, details, failing, mint

Sub = pb.Subscription


async def new_meter(channel: grpc.aio.Channel, code: str) -> meter_pb2.Meter:
    return await meter_pb2_grpc.MeterServiceStub(channel).CreateMeter(
        meter_pb2.CreateMeterRequest(
            meter=meter_pb2.Meter(code=code, display_name=code, aggregation=meter_pb2.Meter.AGGREGATION_SUM)
        )
    )


async def metered_plan(channel: grpc.aio.Channel, code: str, *meters: meter_pb2.Meter) -> plan_pb2.Plan:
    per_unit = plan_pb2.Price(per_unit=plan_pb2.PerUnitPrice(unit_price=decimal_pb2.Decimal(value="1")))
    plan = plan_pb2.Plan(
        code=code,
        display_name=code,
        currency_code="USD",
        billing_interval=MONTH,
        base_fee=usd(1000),
        metered_charges=[
            plan_pb2.MeteredCharge(meter_id=meter.id, description=meter.code, price=per_unit)
            for meter in meters
        ],
    )
    return await plan_pb2_grpc.PlanServiceStub(channel).CreatePlan(plan_pb2.CreatePlanRequest(plan=plan))


async def subscribe(subs: SubscriptionServiceStub, account_id: str, plan_id: str) -> Sub:
    return await subs.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=Sub(account_id=account_id, plan_id=plan_id))
    )


async def live_ids(subs: SubscriptionServiceStub, account_id: str) -> list[str]:
    listed = await subs.ListSubscriptions(pb.ListSubscriptionsRequest(account_id=account_id))
    return [s.id for s in listed.subscriptions]


def assert_meter_taken(error: grpc.aio.AioRpcError, meter: meter_pb2.Meter, holder: str, field: str) -> None:
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = details(error)
    assert found.reason == "METER_ALREADY_CHARGED"
    assert dict(found.info.metadata) == {
        "field": field,
        "meter_id": meter.id,
        "plan_id": found.info.metadata["plan_id"],
        "subscription_id": holder,
    }
    assert meter.id in (error.details() or "") and holder in (error.details() or "")


async def test_a_second_subscription_charging_a_meter_is_refused_naming_it_and_the_first(
    channel: grpc.aio.Channel,
) -> None:
    subs = SubscriptionServiceStub(channel)
    calls, sms = await new_meter(channel, "calls"), await new_meter(channel, "sms")
    first_plan = await metered_plan(channel, "calls-a", calls)
    both = await metered_plan(channel, "calls-and-sms", sms, calls)
    sms_only = await metered_plan(channel, "sms-only", sms)
    account = await new_account(channel, 1)
    first = await subscribe(subs, account.id, first_plan.id)

    refused = await failing(subscribe(subs, account.id, both.id))
    assert_meter_taken(refused, calls, first.id, "subscription.plan_id")
    assert details(refused).info.metadata["plan_id"] == both.id
    assert await live_ids(subs, account.id) == [first.id]  # nothing written

    # Another meter, flat plans, and another account are all fine.
    on_sms = await subscribe(subs, account.id, sms_only.id)
    flat_1, flat_2 = await new_plan(channel, "flat-1"), await new_plan(channel, "flat-2")
    flats = [(await subscribe(subs, account.id, plan.id)).id for plan in (flat_1, flat_2)]
    other = await new_account(channel, 2)
    await subscribe(subs, other.id, first_plan.id)
    assert sorted(await live_ids(subs, account.id)) == sorted([first.id, on_sms.id, *flats])

    # Now sms is taken as well: the same plan again is refused on it or on calls, naming a holder.
    again = await failing(subscribe(subs, account.id, sms_only.id))
    assert_meter_taken(again, sms, on_sms.id, "subscription.plan_id")


async def test_changes_onto_a_charged_meter_are_refused_now_at_the_period_end_and_in_preview(
    channel: grpc.aio.Channel,
) -> None:
    subs = SubscriptionServiceStub(channel)
    calls = await new_meter(channel, "calls")
    metered = await metered_plan(channel, "calls", calls)
    metered_too = await metered_plan(channel, "calls-too", calls)
    flat = await new_plan(channel, "flat")
    account = await new_account(channel, 3)
    holder = await subscribe(subs, account.id, metered.id)
    flat_sub = await subscribe(subs, account.id, flat.id)

    for timing in (pb.CHANGE_TIMING_IMMEDIATELY, pb.CHANGE_TIMING_PERIOD_END):
        change = pb.ChangeSubscriptionRequest(id=flat_sub.id, plan_id=metered_too.id, timing=timing)
        refused = await failing(subs.ChangeSubscription(change))
        assert_meter_taken(refused, calls, holder.id, "plan_id")
        preview = pb.PreviewChangeRequest(id=flat_sub.id, plan_id=metered_too.id, timing=timing)
        assert_meter_taken(await failing(subs.PreviewChange(preview)), calls, holder.id, "plan_id")
    unchanged = await subs.GetSubscription(pb.GetSubscriptionRequest(id=flat_sub.id))
    assert unchanged == flat_sub  # nothing written, not even a scheduled change

    # The holder itself may move between plans charging the meter (it does not compete with itself).
    moved = await subs.ChangeSubscription(pb.ChangeSubscriptionRequest(id=holder.id, plan_id=metered_too.id))
    assert moved.subscription.plan_id == metered_too.id


async def test_a_scheduled_change_holds_its_plan_s_meters_from_when_it_is_scheduled(
    channel: grpc.aio.Channel,
) -> None:
    """The worker applies a scheduled change later without any check: the check is made when it is
    scheduled, and from then on the meters of the scheduled plan are taken."""
    subs = SubscriptionServiceStub(channel)
    calls = await new_meter(channel, "calls")
    metered = await metered_plan(channel, "calls", calls)
    flat = await new_plan(channel, "flat")
    account = await new_account(channel, 4)
    flat_sub = await subscribe(subs, account.id, flat.id)
    await subs.ChangeSubscription(
        pb.ChangeSubscriptionRequest(id=flat_sub.id, plan_id=metered.id, timing=pb.CHANGE_TIMING_PERIOD_END)
    )
    refused = await failing(subscribe(subs, account.id, metered.id))
    assert_meter_taken(refused, calls, flat_sub.id, "subscription.plan_id")

    await subs.CancelScheduledChange(pb.CancelScheduledChangeRequest(id=flat_sub.id))
    free = await subscribe(subs, account.id, metered.id)
    assert sorted(await live_ids(subs, account.id)) == sorted([flat_sub.id, free.id])


async def test_a_canceled_subscription_frees_its_meter_and_a_period_end_cancel_does_not_yet(
    channel: grpc.aio.Channel,
) -> None:
    subs = SubscriptionServiceStub(channel)
    calls = await new_meter(channel, "calls")
    metered = await metered_plan(channel, "calls", calls)
    account = await new_account(channel, 5)
    first = await subscribe(subs, account.id, metered.id)
    await subs.CancelSubscription(pb.CancelSubscriptionRequest(id=first.id, at_period_end=True))
    refused = await failing(subscribe(subs, account.id, metered.id))
    assert_meter_taken(refused, calls, first.id, "subscription.plan_id")  # still in its period

    await subs.CancelSubscription(pb.CancelSubscriptionRequest(id=first.id))  # now
    second = await subscribe(subs, account.id, metered.id)
    assert await live_ids(subs, account.id) == [second.id]


@pytest.fixture
async def http(app: App) -> AsyncIterator[aiohttp.ClientSession]:
    async with Gateway(app) as session:
        yield session


async def test_the_refusal_over_rest_is_409_with_the_error_info(
    app: App, channel: grpc.aio.Channel, http: aiohttp.ClientSession
) -> None:
    subs = SubscriptionServiceStub(channel)
    calls = await new_meter(channel, "calls")
    metered = await metered_plan(channel, "calls", calls)
    flat = await new_plan(channel, "flat")
    account = await new_account(channel, 6)
    holder = await subscribe(subs, account.id, metered.id)
    admin = bearer(mint(app))

    body = {"accountId": account.id, "planId": metered.id}
    refused, _ = await call(http, "POST", "/v1/subscriptions", 409, json=body, headers=admin)
    assert refused["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert calls.id in refused["message"] and holder.id in refused["message"]
    info = detail(refused, "ErrorInfo")
    assert (info["reason"], info["domain"]) == ("METER_ALREADY_CHARGED", "tally")
    assert info["metadata"] == {
        "field": "subscription.plan_id",
        "meter_id": calls.id,
        "plan_id": metered.id,
        "subscription_id": holder.id,
    }

    flat_sub, _ = await call(
        http,
        "POST",
        "/v1/subscriptions",
        200,
        json={"accountId": account.id, "planId": flat.id},
        headers=admin,
    )
    changed, _ = await call(
        http,
        "POST",
        f"/v1/subscriptions/{flat_sub['id']}:change",
        409,
        json={"planId": metered.id, "timing": "CHANGE_TIMING_PERIOD_END"},
        headers=admin,
    )
    assert detail(changed, "ErrorInfo")["metadata"]["field"] == "plan_id"
    assert detail(changed, "ErrorInfo")["metadata"]["subscription_id"] == holder.id


async def waiting_on_locks(url: str, count: int) -> bool:
    """Poll (bounded, 10 s) until `count` backends of this database wait on a lock."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for _ in range(1000):
            if await lock_waiters(connection, url) >= count:
                return True
            await asyncio.sleep(0.01)
        return False
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_two_concurrent_subscriptions_to_one_meter_on_postgresql_one_is_refused(
    pg_app: App, postgres_url: str
) -> None:
    """Both calls are held at the account's row lock (another connection holds it) and released
    together: with only a share lock each would see the other's subscription missing and both would
    be written. The exclusive lock makes the second see the first."""
    async with channel_as(pg_app, mint(pg_app)) as channel:
        subs = SubscriptionServiceStub(channel)
        calls = await new_meter(channel, "calls")
        plans = [await metered_plan(channel, f"calls-{n}", calls) for n in range(2)]
        account = await new_account(channel, 7)
        async with row_locked(postgres_url, account.id) as (_, transaction):
            racing = [asyncio.ensure_future(subscribe(subs, account.id, plan.id)) for plan in plans]
            assert await waiting_on_locks(postgres_url, 2), "the two calls never reached the row lock"
            await transaction.rollback()
            results = await asyncio.gather(*racing, return_exceptions=True)

        won = [r for r in results if isinstance(r, Sub)]
        lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 1, results
        assert_meter_taken(lost[0], calls, won[0].id, "subscription.plan_id")
        assert await live_ids(subs, account.id) == [won[0].id]


@pytest.mark.postgres
async def test_a_change_onto_a_meter_racing_a_new_subscription_to_it_on_postgresql_one_is_refused(
    pg_app: App, postgres_url: str
) -> None:
    """A change onto a metered plan takes the account's row lock too (after the subscription's), so
    it queues with a CreateSubscription for the same account and one of them sees the other."""
    async with channel_as(pg_app, mint(pg_app)) as channel:
        subs = SubscriptionServiceStub(channel)
        calls = await new_meter(channel, "calls")
        metered = await metered_plan(channel, "calls", calls)
        account = await new_account(channel, 8)
        flat_sub = await subscribe(subs, account.id, (await new_plan(channel, "flat")).id)
        change = pb.ChangeSubscriptionRequest(id=flat_sub.id, plan_id=metered.id)
        async with row_locked(postgres_url, account.id) as (_, transaction):
            racing = [
                asyncio.ensure_future(subs.ChangeSubscription(change)),
                asyncio.ensure_future(subscribe(subs, account.id, metered.id)),
            ]
            assert await waiting_on_locks(postgres_url, 2), "the two calls never reached the row lock"
            await transaction.rollback()
            changed, created = await asyncio.gather(*racing, return_exceptions=True)

        if isinstance(changed, grpc.aio.AioRpcError):
            assert isinstance(created, Sub)
            assert_meter_taken(changed, calls, created.id, "plan_id")
            assert sorted(await live_ids(subs, account.id)) == sorted([flat_sub.id, created.id])
        else:
            assert isinstance(changed, pb.ChangeSubscriptionResponse), changed
            assert isinstance(created, grpc.aio.AioRpcError), created
            assert_meter_taken(created, calls, flat_sub.id, "subscription.plan_id")
            assert await live_ids(subs, account.id) == [flat_sub.id]

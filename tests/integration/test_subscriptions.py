"""The subscription service through the real server on each backend: lifecycle, changes and their
preview, pending items, entitlements, customer isolation, idempotency, audit and events."""

from __future__ import annotations

from datetime import UTC, time
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from sqlalchemy import func, select

from app.server import App
from billing_svc.subscriptions.tables import PendingInvoiceItemRow, SubscriptionPhaseRow
from core.audit import AuditEventRow
from core.outbox import read_events
from core.principal import Role
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as pb
from tally.subscription.v1.subscription_pb2_grpc import SubscriptionServiceStub
from tests.billing_support import YEAR, new_account, new_plan, per_seat
from tests.support import channel_as, details, failing, mint, reason

Sub = pb.Subscription


@pytest.fixture
def subs(channel: grpc.aio.Channel) -> SubscriptionServiceStub:
    return SubscriptionServiceStub(channel)


async def subscribe(
    subs: SubscriptionServiceStub, account_id: str, plan_id: str, request_id: str = "", **fields: object
) -> Sub:
    subscription = Sub(account_id=account_id, plan_id=plan_id, **fields)  # type: ignore[arg-type]
    return await subs.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=subscription, request_id=request_id)
    )


async def items_of(subs: SubscriptionServiceStub, account_id: str) -> list[pb.PendingInvoiceItem]:
    """Every item the account's subscriptions made, invoiced or not (the first period's fees are on
    the sign-up invoice at once)."""
    reply = await subs.ListPendingInvoiceItems(
        pb.ListPendingInvoiceItemsRequest(account_id=account_id, show_invoiced=True)
    )
    return list(reply.items)


async def test_subscribe_get_list_and_the_first_fee(
    channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    account = await new_account(channel, 1, zone="Europe/Berlin")
    plan = await new_plan(channel, "basic")
    created = await subscribe(subs, account.id, plan.id, metadata={"crm": "7"})
    assert created.id.startswith("sub_")
    assert created.state == Sub.STATE_ACTIVE
    assert (created.plan_id, created.plan_version, created.quantity) == (plan.id, 1, 0)
    assert created.billing_time_zone == "Europe/Berlin"
    start = created.current_period_start.ToDatetime(tzinfo=UTC)
    assert start.astimezone(ZoneInfo("Europe/Berlin")).time() == time(0)  # a local midnight
    assert created.current_period_start.ToDatetime() <= created.start_time.ToDatetime()
    assert await subs.GetSubscription(pb.GetSubscriptionRequest(id=created.id)) == created
    listed = await subs.ListSubscriptions(pb.ListSubscriptionsRequest(account_id=account.id))
    assert [s.id for s in listed.subscriptions] == [created.id]
    [item] = await items_of(subs, account.id)
    assert item.kind == pb.PendingInvoiceItem.KIND_FEE
    assert (item.amount.currency_code, item.amount.amount_minor) == ("USD", 3000)
    assert (item.period_start, item.period_end) == (created.current_period_start, created.current_period_end)
    assert item.subscription_id == created.id


async def test_bad_subscriptions_are_refused_naming_the_field(
    channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    account = await new_account(channel, 2)
    eur_plan = await new_plan(channel, "euro", currency="EUR")
    seats = await new_plan(channel, "seats", seat_price=per_seat("10"))
    plain = await new_plan(channel, "plain")
    error = await failing(
        subs.CreateSubscription(pb.CreateSubscriptionRequest(subscription=Sub(plan_id=plain.id)))
    )
    assert "subscription.account_id" in details(error).violations
    error = await failing(subscribe(subs, account.id, eur_plan.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == "CURRENCY_MISMATCH"
    error = await failing(subscribe(subs, account.id, plain.id, quantity=3))
    assert "subscription.quantity" in details(error).violations
    error = await failing(subscribe(subs, account.id, seats.id, quantity=-1))
    assert "subscription.quantity" in details(error).violations
    error = await failing(subscribe(subs, "acct_missing", plain.id))
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    error = await failing(subscribe(subs, account.id, "plan_missing"))
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND")
    await plan_pb2_grpc.PlanServiceStub(channel).ArchivePlan(plan_pb2.ArchivePlanRequest(id=plain.id))
    error = await failing(subscribe(subs, account.id, plain.id))
    assert reason(error) == "PLAN_ARCHIVED"
    assert await items_of(subs, account.id) == []  # nothing half-written


async def test_an_update_may_echo_the_subscription_but_changes_only_metadata(
    channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    """AIP-134/AIP-203: a mask may name fields sent back as they are (or left empty) and output-only
    ones; a real change of plan, quantity or account is refused, naming the field and the method."""
    account = await new_account(channel, 20)
    plan = await new_plan(channel, "echo", seat_price=per_seat("5"))
    other = await new_plan(channel, "echo-other")
    created = await subscribe(subs, account.id, plan.id, quantity=3)

    def update(mask: list[str], **fields: object) -> Any:
        subscription = Sub(id=created.id, **fields)  # type: ignore[arg-type]
        request = pb.UpdateSubscriptionRequest(subscription=subscription)
        request.update_mask.paths.extend(mask)
        return subs.UpdateSubscription(request)

    echoed = ["account_id", "plan_id", "quantity", "metadata", "state", "create_time"]
    same = await update(
        echoed,
        account_id=account.id,
        plan_id=plan.id,
        quantity=3,
        metadata={"a": "1"},
        state=Sub.STATE_PAUSED,
    )
    assert (same.metadata, same.quantity, same.state) == ({"a": "1"}, 3, Sub.STATE_ACTIVE)
    empty = await update(echoed, metadata={"a": "2"})  # empty and zero: left alone
    assert (empty.plan_id, empty.quantity, empty.metadata) == (plan.id, 3, {"a": "2"})
    for field, value, words in (
        ("plan_id", other.id, "ChangeSubscription"),
        ("quantity", 4, "ChangeSubscription"),
        ("account_id", "acct_other", "cannot change"),
    ):
        error = await failing(update([field, "metadata"], metadata={"a": "3"}, **{field: value}))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in details(error).violations[f"subscription.{field}"]
    error = await failing(update(["billing_address"]))
    assert "update_mask" in details(error).violations
    got = await subs.GetSubscription(pb.GetSubscriptionRequest(id=created.id))
    assert (got.plan_id, got.quantity, got.metadata) == (plan.id, 3, {"a": "2"})  # nothing half-made


async def test_preview_returns_exactly_what_the_change_makes(
    app: App, channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    account = await new_account(channel, 3)
    small = await new_plan(channel, "small", base_minor=1000, seat_price=per_seat("4.25"))
    large = await new_plan(channel, "large", base_minor=5000, seat_price=per_seat("7.10"))
    sub = await subscribe(subs, account.id, small.id, quantity=2)
    fields = {"id": sub.id, "plan_id": large.id, "quantity": 5}
    preview = await subs.PreviewChange(pb.PreviewChangeRequest(**fields))  # type: ignore[arg-type]
    assert len(await items_of(subs, account.id)) == 2  # the preview changed nothing
    changed = await subs.ChangeSubscription(pb.ChangeSubscriptionRequest(**fields))  # type: ignore[arg-type]

    # On the wall clock the two calls see different instants, so amounts and slice starts may
    # differ by a second; tests/scenarios compares them exactly on a test clock.
    def shape(items: Any) -> list[tuple[object, ...]]:
        return [
            (
                i.kind,
                i.fee_code,
                i.quantity.value,
                i.period_end,
                i.plan_id,
            )
            for i in items
        ]

    assert shape(changed.items) == shape(preview.items)
    assert all(not i.id for i in preview.items) and all(i.id.startswith("pii_") for i in changed.items)
    kinds = [i.kind for i in changed.items]
    assert kinds.count(pb.PendingInvoiceItem.KIND_PRORATION_CREDIT) == 2  # base and seats
    assert kinds.count(pb.PendingInvoiceItem.KIND_PRORATION_CHARGE) == 2
    assert changed.subscription.plan_id == large.id and changed.subscription.quantity == 5
    assert preview.subscription.plan_id == changed.subscription.plan_id
    assert (await subs.GetSubscription(pb.GetSubscriptionRequest(id=sub.id))).plan_id == large.id
    async with app.components.platform.readers() as session:
        phases = (await session.execute(select(func.count()).select_from(SubscriptionPhaseRow))).scalar_one()
    assert phases == 2


async def test_a_retried_change_is_made_once(
    app: App, channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    account = await new_account(channel, 4)
    plan = await new_plan(channel, "retry", seat_price=per_seat("3"))
    sub = await subscribe(subs, account.id, plan.id, quantity=1)
    initial = len(await items_of(subs, account.id))  # base fee and seats
    request = pb.ChangeSubscriptionRequest(id=sub.id, quantity=4, request_id="change-1")
    first = await subs.ChangeSubscription(request)
    again = await subs.ChangeSubscription(request)
    assert again == first
    async with app.components.platform.readers() as session:
        count = (await session.execute(select(func.count()).select_from(PendingInvoiceItemRow))).scalar_one()
    assert count == initial + len(first.items)
    assert len(first.items) == 2  # the seat fee's credit and charge
    error = await failing(
        subs.ChangeSubscription(pb.ChangeSubscriptionRequest(id=sub.id, quantity=9, request_id="change-1"))
    )
    assert reason(error) == "REQUEST_ID_REUSED"


async def test_scheduled_change_and_cancel_are_shown_and_can_be_undone(
    channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    account = await new_account(channel, 5)
    monthly = await new_plan(channel, "m")
    yearly = await new_plan(channel, "y", interval=YEAR, base_minor=30000)
    sub = await subscribe(subs, account.id, monthly.id)
    scheduled = await subs.ChangeSubscription(
        pb.ChangeSubscriptionRequest(id=sub.id, plan_id=yearly.id, timing=pb.CHANGE_TIMING_PERIOD_END)
    )
    assert scheduled.items == []
    shown = scheduled.subscription.scheduled_change
    assert (shown.plan_id, shown.effective_time) == (yearly.id, sub.current_period_end)
    dropped = await subs.CancelScheduledChange(pb.CancelScheduledChangeRequest(id=sub.id))
    assert not dropped.HasField("scheduled_change")
    error = await failing(subs.CancelScheduledChange(pb.CancelScheduledChangeRequest(id=sub.id)))
    assert reason(error) == "NO_SCHEDULED_CHANGE"
    canceling = await subs.CancelSubscription(pb.CancelSubscriptionRequest(id=sub.id, at_period_end=True))
    assert canceling.cancel_at_period_end and canceling.state == Sub.STATE_ACTIVE
    kept = await subs.UncancelSubscription(pb.UncancelSubscriptionRequest(id=sub.id))
    assert not kept.cancel_at_period_end
    error = await failing(subs.UncancelSubscription(pb.UncancelSubscriptionRequest(id=sub.id)))
    assert reason(error) == "NO_SCHEDULED_CANCEL"


async def test_cancel_now_pause_resume_and_illegal_transitions(
    channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    account = await new_account(channel, 6)
    plan = await new_plan(channel, "life")
    sub = await subscribe(subs, account.id, plan.id)
    paused = await subs.PauseSubscription(pb.PauseSubscriptionRequest(id=sub.id))
    assert paused.state == Sub.STATE_PAUSED and paused.HasField("pause_time")
    error = await failing(subs.PauseSubscription(pb.PauseSubscriptionRequest(id=sub.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = details(error)
    assert (found.reason, found.info.metadata["state"]) == ("INVALID_STATE", "paused")
    assert "paused" in (error.details() or "")
    resumed = await subs.ResumeSubscription(pb.ResumeSubscriptionRequest(id=sub.id))
    assert resumed.state == Sub.STATE_ACTIVE
    canceled = await subs.CancelSubscription(pb.CancelSubscriptionRequest(id=sub.id))
    assert canceled.state == Sub.STATE_CANCELED and canceled.HasField("cancel_time")
    error = await failing(subs.ResumeSubscription(pb.ResumeSubscriptionRequest(id=sub.id)))
    assert details(error).info.metadata["state"] == "canceled"
    hidden = await subs.ListSubscriptions(pb.ListSubscriptionsRequest(account_id=account.id))
    assert list(hidden.subscriptions) == []
    shown = await subs.ListSubscriptions(
        pb.ListSubscriptionsRequest(account_id=account.id, show_canceled=True)
    )
    assert [s.id for s in shown.subscriptions] == [sub.id]


async def test_entitlements_come_from_entitled_subscriptions(
    channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    account = await new_account(channel, 7)
    features = [
        plan_pb2.Feature(code="sso", enabled=True),
        plan_pb2.Feature(code="projects", limit=5),
        plan_pb2.Feature(code="beta", enabled=False),
    ]
    plan_a = await new_plan(channel, "ent-a", features=features)
    plan_b = await new_plan(channel, "ent-b", features=[plan_pb2.Feature(code="projects", limit=20)])
    await subscribe(subs, account.id, plan_a.id)
    second = await subscribe(subs, account.id, plan_b.id)
    got = await subs.GetEntitlements(pb.GetEntitlementsRequest(account_id=account.id))
    assert [
        (e.feature_code, e.WhichOneof("value"), e.limit if e.HasField("limit") else e.enabled)
        for e in got.entitlements
    ] == [
        ("projects", "limit", 20),
        ("sso", "enabled", True),
    ]
    await subs.PauseSubscription(pb.PauseSubscriptionRequest(id=second.id))
    got = await subs.GetEntitlements(pb.GetEntitlementsRequest(account_id=account.id))
    assert {e.feature_code: e.limit for e in got.entitlements if e.HasField("limit")} == {"projects": 5}
    # An account that does not exist has no entitlements or items to list: NOT_FOUND, not empty.
    for call in (
        subs.GetEntitlements(pb.GetEntitlementsRequest(account_id="acct_missing")),
        subs.ListPendingInvoiceItems(pb.ListPendingInvoiceItemsRequest(account_id="acct_missing")),
    ):
        error = await failing(call)
        assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_customers_see_only_their_own_and_cannot_change_anything(
    app: App, channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    mine, theirs = await new_account(channel, 8), await new_account(channel, 9)
    plan = await new_plan(channel, "iso")
    my_sub = await subscribe(subs, mine.id, plan.id)
    their_sub = await subscribe(subs, theirs.id, plan.id)
    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=mine.id)) as customer_channel:
        customer = SubscriptionServiceStub(customer_channel)
        assert (await customer.GetSubscription(pb.GetSubscriptionRequest(id=my_sub.id))).id == my_sub.id
        error = await failing(customer.GetSubscription(pb.GetSubscriptionRequest(id=their_sub.id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        listed = await customer.ListSubscriptions(pb.ListSubscriptionsRequest())
        assert [s.id for s in listed.subscriptions] == [my_sub.id]
        listed = await customer.ListSubscriptions(pb.ListSubscriptionsRequest(account_id=theirs.id))
        assert list(listed.subscriptions) == []
        for call in (
            customer.ListPendingInvoiceItems(pb.ListPendingInvoiceItemsRequest(account_id=theirs.id)),
            customer.GetEntitlements(pb.GetEntitlementsRequest(account_id=theirs.id)),
        ):
            assert (await failing(call)).code() == grpc.StatusCode.NOT_FOUND
        assert (
            len(
                (
                    await customer.ListPendingInvoiceItems(
                        pb.ListPendingInvoiceItemsRequest(account_id=mine.id, show_invoiced=True)
                    )
                ).items
            )
            == 1
        )
        for call in (
            customer.CancelSubscription(pb.CancelSubscriptionRequest(id=my_sub.id)),
            customer.ChangeSubscription(pb.ChangeSubscriptionRequest(id=my_sub.id, quantity=2)),
            customer.PreviewChange(pb.PreviewChangeRequest(id=my_sub.id, quantity=2)),
            customer.CreateSubscription(
                pb.CreateSubscriptionRequest(subscription=Sub(account_id=mine.id, plan_id=plan.id))
            ),
        ):
            assert (await failing(call)).code() == grpc.StatusCode.PERMISSION_DENIED


async def test_every_change_is_audited_and_emitted(
    app: App, channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    account = await new_account(channel, 10)
    plan = await new_plan(channel, "audited")
    sub = await subscribe(subs, account.id, plan.id, request_id="create-1")
    await subs.CancelSubscription(pb.CancelSubscriptionRequest(id=sub.id, at_period_end=True))
    await subs.CancelSubscription(pb.CancelSubscriptionRequest(id=sub.id))
    async with app.components.platform.readers() as session:
        rows = (
            (
                await session.execute(
                    select(AuditEventRow.action)
                    .where(AuditEventRow.resource_id == sub.id)
                    .order_by(AuditEventRow.time)
                )
            )
            .scalars()
            .all()
        )
    assert list(rows) == ["created", "cancel_scheduled", "canceled"]
    async with app.components.platform.readers() as session:
        every = await read_events(session, after_position=0, limit=100)
    events = [e for e in every if e.resource_id == sub.id]
    assert [e.type for e in events] == [
        "subscription.created",
        "subscription.cancel_scheduled",
        "subscription.canceled",
    ]
    assert events[0].payload["pending_invoice_item_ids"] and events[0].payload["plan_id"] == plan.id


async def test_a_new_plan_version_leaves_existing_subscriptions_on_theirs(
    channel: grpc.aio.Channel, subs: SubscriptionServiceStub
) -> None:
    from google.protobuf import field_mask_pb2

    from tests.billing_support import usd

    account = await new_account(channel, 11)
    plan = await new_plan(channel, "versioned", base_minor=1000)
    sub = await subscribe(subs, account.id, plan.id)
    updated = await plan_pb2_grpc.PlanServiceStub(channel).UpdatePlan(
        plan_pb2.UpdatePlanRequest(
            plan=plan_pb2.Plan(id=plan.id, base_fee=usd(1500)),
            update_mask=field_mask_pb2.FieldMask(paths=["base_fee"]),
        )
    )
    assert updated.version == 2
    assert (await subs.GetSubscription(pb.GetSubscriptionRequest(id=sub.id))).plan_version == 1
    moved = await subs.ChangeSubscription(pb.ChangeSubscriptionRequest(id=sub.id, plan_id=plan.id))
    assert moved.subscription.plan_version == 2
    charges = [i for i in moved.items if i.kind == pb.PendingInvoiceItem.KIND_PRORATION_CHARGE]
    assert len(charges) == 1
    assert charges[0].amount.amount_minor > 0
    error = await failing(subs.ChangeSubscription(pb.ChangeSubscriptionRequest(id=sub.id, plan_id=plan.id)))
    assert "plan_id" in details(error).violations  # already on the latest version: changes nothing


async def test_the_rest_shapes(app: App, channel: grpc.aio.Channel) -> None:
    from tests.integration.test_gateway import Gateway, bearer, call

    account = await new_account(channel, 12)
    plan = await new_plan(channel, "rest", features=[plan_pb2.Feature(code="api", limit=100)])
    admin = bearer(mint(app))
    async with Gateway(app) as http:
        created, _ = await call(
            http,
            "POST",
            "/v1/subscriptions",
            200,
            json={"accountId": account.id, "planId": plan.id, "metadata": {"team": "core"}},
            headers={**admin, "Idempotency-Key": "rest-sub-1"},
        )
        assert created["state"] == "STATE_ACTIVE"
        again, _ = await call(
            http,
            "POST",
            "/v1/subscriptions",
            200,
            json={"accountId": account.id, "planId": plan.id, "metadata": {"team": "core"}},
            headers={**admin, "Idempotency-Key": "rest-sub-1"},
        )
        assert again["id"] == created["id"]
        sid = created["id"]
        got, _ = await call(http, "GET", f"/v1/subscriptions/{sid}", 200, headers=admin)
        assert got["id"] == sid
        listed, _ = await call(http, "GET", f"/v1/subscriptions?accountId={account.id}", 200, headers=admin)
        assert [s["id"] for s in listed["subscriptions"]] == [sid]
        patched, _ = await call(
            http,
            "PATCH",
            f"/v1/subscriptions/{sid}",
            200,
            json={"metadata": {"team": "growth"}},
            headers=admin,
        )
        assert patched["metadata"] == {"team": "growth"}
        entitled, _ = await call(http, "GET", f"/v1/accounts/{account.id}/entitlements", 200, headers=admin)
        assert entitled["entitlements"] == [{"featureCode": "api", "limit": "100"}]
        listed = f"/v1/accounts/{account.id}/pendingInvoiceItems?showInvoiced=true"
        items, _ = await call(http, "GET", listed, 200, headers=admin)
        assert [i["amount"] for i in items["items"]] == [{"currencyCode": "USD", "amountMinor": "3000"}]
        # A plan without seats refuses a quantity, naming the field (400 over REST).
        body, _ = await call(
            http, "POST", f"/v1/subscriptions/{sid}:previewChange", 400, json={"quantity": "2"}, headers=admin
        )
        assert body["details"][-1]["fieldViolations"][0]["field"] == "quantity"
    async with Gateway(app) as http:
        body, _ = await call(http, "DELETE", f"/v1/subscriptions/{sid}", 200, headers=admin)
        assert body["state"] == "STATE_CANCELED"
        body, _ = await call(http, "POST", f"/v1/subscriptions/{sid}:pause", 409, json={}, headers=admin)
        assert body["details"][0]["reason"] == "INVALID_STATE"

"""gRPC face of the subscription service: decode the proto, call one use case, encode the reply."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from billing_svc.subscriptions import change_use_cases, periods, use_cases
from billing_svc.subscriptions.change_use_cases import ChangeSubscription, Timing
from billing_svc.subscriptions.domain import Entitlement, ItemKind, PendingItem, State, Subscription
from billing_svc.subscriptions.use_cases import ChangeResult, SubscriptionDeps
from core.errors import InvalidArgument
from core.money import Money
from core.money_proto import decimal_to_proto, money_to_proto
from core.principal import Caller, caller_for
from tally.subscription.v1 import subscription_pb2 as pb
from tally.subscription.v1 import subscription_pb2_grpc

_STATES = {
    State.TRIALING: pb.Subscription.STATE_TRIALING,
    State.ACTIVE: pb.Subscription.STATE_ACTIVE,
    State.PAST_DUE: pb.Subscription.STATE_PAST_DUE,
    State.PAUSED: pb.Subscription.STATE_PAUSED,
    State.CANCELED: pb.Subscription.STATE_CANCELED,
    State.INCOMPLETE: pb.Subscription.STATE_INCOMPLETE,
    State.UNPAID: pb.Subscription.STATE_UNPAID,
}
_KINDS = {
    ItemKind.FEE: pb.PendingInvoiceItem.KIND_FEE,
    ItemKind.PRORATION_CHARGE: pb.PendingInvoiceItem.KIND_PRORATION_CHARGE,
    ItemKind.PRORATION_CREDIT: pb.PendingInvoiceItem.KIND_PRORATION_CREDIT,
}
_SERVICE = pb.DESCRIPTOR.services_by_name["SubscriptionService"].full_name


def _caller(method: str, request_id: str = "") -> Caller:
    return caller_for(f"/{_SERVICE}/{method}", request_id)


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def subscription_to_proto(subscription: Subscription) -> pb.Subscription:
    message = pb.Subscription(
        id=subscription.id,
        account_id=subscription.account_id,
        plan_id=subscription.plan_id,
        plan_version=subscription.plan_version,
        quantity=subscription.quantity,
        state=_STATES[subscription.state],
        billing_time_zone=subscription.billing_time_zone,
        cancel_at_period_end=subscription.cancel_at_period_end,
        metadata=dict(subscription.metadata),
        etag=subscription.etag,
    )
    message.billing_cycle_anchor.CopyFrom(_timestamp(_anchor(subscription)))
    for name in ("start_time", "current_period_start", "current_period_end", "create_time", "update_time"):
        getattr(message, name).CopyFrom(_timestamp(getattr(subscription, name)))
    for name in ("trial_end_time", "cancel_time", "pause_time"):
        value = getattr(subscription, name)
        if value is not None:
            getattr(message, name).CopyFrom(_timestamp(value))
    change = subscription.scheduled_change
    if change is not None:
        message.scheduled_change.plan_id = change.plan_id
        message.scheduled_change.plan_version = change.plan_version
        message.scheduled_change.quantity = change.quantity
        due = subscription.due_time
        if due is not None:
            message.scheduled_change.effective_time.CopyFrom(_timestamp(due))
    return message


def _anchor(subscription: Subscription) -> datetime:
    zone = periods.zone_named(subscription.billing_time_zone, field="billing_time_zone")
    return periods.day_start(subscription.anchor_date, zone)


def item_to_proto(item: PendingItem) -> pb.PendingInvoiceItem:
    message = pb.PendingInvoiceItem(
        id=item.id,
        account_id=item.account_id,
        subscription_id=item.subscription_id,
        kind=_KINDS[item.kind],
        fee_code=item.fee_code,
        description=item.description,
        amount=money_to_proto(Money(item.currency_code, item.amount_minor)),
        quantity=decimal_to_proto(item.quantity),
        plan_id=item.plan_id,
        plan_version=item.plan_version,
        invoice_id=item.invoice_id,
    )
    message.period_start.CopyFrom(_timestamp(item.period_start))
    message.period_end.CopyFrom(_timestamp(item.period_end))
    message.create_time.CopyFrom(_timestamp(item.create_time))
    return message


def entitlement_to_proto(entitlement: Entitlement) -> pb.Entitlement:
    message = pb.Entitlement(feature_code=entitlement.feature_code, display_name=entitlement.display_name)
    if entitlement.limit is not None:
        message.limit = entitlement.limit
    else:
        message.enabled = True
    return message


def _prorate(value: int, *, default: bool, field: str = "proration_behavior") -> bool:
    if value == pb.PRORATION_BEHAVIOR_UNSPECIFIED:
        return default
    if value == pb.PRORATION_BEHAVIOR_CREATE_PRORATIONS:
        return True
    if value == pb.PRORATION_BEHAVIOR_NONE:
        return False
    raise InvalidArgument.field(field, f"unknown value {value}")


def _timing(value: int) -> Timing:
    if value in (pb.CHANGE_TIMING_UNSPECIFIED, pb.CHANGE_TIMING_IMMEDIATELY):
        return Timing.IMMEDIATELY
    if value == pb.CHANGE_TIMING_PERIOD_END:
        return Timing.PERIOD_END
    raise InvalidArgument.field("timing", f"unknown value {value}")


def _change_command(
    request: pb.ChangeSubscriptionRequest | pb.PreviewChangeRequest, etag: str = ""
) -> ChangeSubscription:
    return ChangeSubscription(
        id=request.id,
        plan_id=request.plan_id,
        quantity=request.quantity if request.HasField("quantity") else None,
        timing=_timing(request.timing),
        prorate=_prorate(request.proration_behavior, default=True),
        etag=etag,
    )


def _change_reply(result: ChangeResult) -> tuple[pb.Subscription, list[pb.PendingInvoiceItem]]:
    return subscription_to_proto(result.subscription), [item_to_proto(item) for item in result.items]


class SubscriptionServicer(subscription_pb2_grpc.SubscriptionServiceServicer):
    def __init__(self, deps: SubscriptionDeps):
        self._deps = deps

    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Subscription:
        given = request.subscription
        subscription = await use_cases.create_subscription(
            self._deps,
            _caller("CreateSubscription", request.request_id),
            account_id=given.account_id,
            plan_id=given.plan_id,
            quantity=given.quantity,
            metadata=dict(given.metadata),
        )
        return subscription_to_proto(subscription)

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Subscription:
        return subscription_to_proto(
            await use_cases.get_subscription(self._deps, _caller("GetSubscription"), request.id)
        )

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSubscriptionsResponse:
        page = await use_cases.list_subscriptions(
            self._deps,
            _caller("ListSubscriptions"),
            size=request.page_size,
            page_token=request.page_token,
            account_id=request.account_id,
            show_canceled=request.show_canceled,
        )
        return pb.ListSubscriptionsResponse(
            subscriptions=[subscription_to_proto(s) for s in page.subscriptions],
            next_page_token=page.next_page_token,
        )

    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Subscription:
        mask = tuple(request.update_mask.paths) if request.HasField("update_mask") else ()
        subscription = await use_cases.update_subscription(
            self._deps,
            _caller("UpdateSubscription", request.request_id),
            request.subscription.id,
            metadata=dict(request.subscription.metadata),
            mask=mask or ("metadata",),
            etag=request.subscription.etag,
            echoed={name: getattr(request.subscription, name) for name in use_cases.ECHO_ONLY},
        )
        return subscription_to_proto(subscription)

    async def CancelSubscription(
        self, request: pb.CancelSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Subscription:
        subscription = await use_cases.cancel_subscription(
            self._deps,
            _caller("CancelSubscription", request.request_id),
            request.id,
            at_period_end=request.at_period_end,
            prorate=_prorate(request.proration_behavior, default=False),
            etag=request.etag,
            invoice_now=request.invoice_now,
        )
        return subscription_to_proto(subscription)

    async def UncancelSubscription(
        self, request: pb.UncancelSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Subscription:
        subscription = await use_cases.uncancel_subscription(
            self._deps, _caller("UncancelSubscription", request.request_id), request.id
        )
        return subscription_to_proto(subscription)

    async def ChangeSubscription(
        self, request: pb.ChangeSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChangeSubscriptionResponse:
        result = await change_use_cases.change_subscription(
            self._deps,
            _caller("ChangeSubscription", request.request_id),
            _change_command(request, request.etag),
        )
        subscription, items = _change_reply(result)
        return pb.ChangeSubscriptionResponse(subscription=subscription, items=items)

    async def PreviewChange(
        self, request: pb.PreviewChangeRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreviewChangeResponse:
        result = await change_use_cases.preview_change(
            self._deps, _caller("PreviewChange"), _change_command(request)
        )
        subscription, items = _change_reply(result)
        return pb.PreviewChangeResponse(subscription=subscription, items=items)

    async def CancelScheduledChange(
        self, request: pb.CancelScheduledChangeRequest, context: grpc.aio.ServicerContext
    ) -> pb.Subscription:
        result = await change_use_cases.cancel_scheduled_change(
            self._deps, _caller("CancelScheduledChange", request.request_id), request.id
        )
        return subscription_to_proto(result.subscription)

    async def PauseSubscription(
        self, request: pb.PauseSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Subscription:
        subscription = await use_cases.pause_subscription(
            self._deps,
            _caller("PauseSubscription", request.request_id),
            request.id,
            prorate=_prorate(request.proration_behavior, default=True),
        )
        return subscription_to_proto(subscription)

    async def ResumeSubscription(
        self, request: pb.ResumeSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Subscription:
        subscription = await use_cases.resume_subscription(
            self._deps,
            _caller("ResumeSubscription", request.request_id),
            request.id,
            prorate=_prorate(request.proration_behavior, default=True),
        )
        return subscription_to_proto(subscription)

    async def ListPendingInvoiceItems(
        self, request: pb.ListPendingInvoiceItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPendingInvoiceItemsResponse:
        page = await use_cases.list_pending_items(
            self._deps,
            _caller("ListPendingInvoiceItems"),
            account_id=request.account_id,
            subscription_id=request.subscription_id,
            show_invoiced=request.show_invoiced,
            size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListPendingInvoiceItemsResponse(
            items=[item_to_proto(item) for item in page.items], next_page_token=page.next_page_token
        )

    async def GetEntitlements(
        self, request: pb.GetEntitlementsRequest, context: grpc.aio.ServicerContext
    ) -> pb.Entitlements:
        found = await use_cases.get_entitlements(self._deps, _caller("GetEntitlements"), request.account_id)
        return pb.Entitlements(
            account_id=request.account_id, entitlements=[entitlement_to_proto(e) for e in found]
        )

"""gRPC face of the webhook service: decode the proto, call one use case, encode the reply."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from billing_svc.webhooks import domain, use_cases
from billing_svc.webhooks.domain import Attempt, Delivery, Endpoint
from billing_svc.webhooks.use_cases import WebhookDeps
from core.errors import InvalidArgument
from core.principal import caller_for
from tally.billing.v1 import webhook_pb2, webhook_pb2_grpc

_SERVICE = webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name


def endpoint_to_proto(endpoint: Endpoint, secret: str = "") -> webhook_pb2.WebhookEndpoint:
    return webhook_pb2.WebhookEndpoint(
        id=endpoint.id,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        description=endpoint.description,
        enabled=endpoint.enabled,
        secret=secret,
        create_time=_timestamp(endpoint.create_time),
    )


_Status = webhook_pb2.WebhookDelivery.Status
STATUS_OF_VIEW: dict[str, _Status.ValueType] = {
    domain.VIEW_PENDING: _Status.STATUS_PENDING,
    domain.VIEW_SUCCEEDED: _Status.STATUS_SUCCEEDED,
    domain.VIEW_FAILED: _Status.STATUS_FAILED,
    domain.VIEW_RETRYING: _Status.STATUS_RETRYING,
}
VIEW_OF_STATUS = {status: view for view, status in STATUS_OF_VIEW.items()}


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def delivery_to_proto(delivery: Delivery) -> webhook_pb2.WebhookDelivery:
    return webhook_pb2.WebhookDelivery(
        id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        resource_type=delivery.resource_type,
        resource_id=delivery.resource_id,
        status=STATUS_OF_VIEW[delivery.view],
        attempt_count=delivery.attempt_count,
        next_attempt_time=_timestamp(delivery.next_attempt_time),
        last_response_status_code=delivery.last_response_status_code,
        last_error=delivery.last_error,
        last_attempt_time=_timestamp(delivery.last_attempt_time),
        event_time=_timestamp(delivery.event_time),
        create_time=_timestamp(delivery.create_time),
    )


def attempt_to_proto(attempt: Attempt) -> webhook_pb2.WebhookDeliveryAttempt:
    return webhook_pb2.WebhookDeliveryAttempt(
        id=attempt.id,
        delivery_id=attempt.delivery_id,
        attempt_time=_timestamp(attempt.attempt_time),
        response_status_code=attempt.response_status_code,
        error=attempt.error,
        duration_ms=attempt.duration_ms,
    )


def _view_of(status: int) -> str:
    """The listing's status filter: unset means every status; an unknown number is refused."""
    if status == _Status.STATUS_UNSPECIFIED:
        return ""
    view = VIEW_OF_STATUS.get(_Status.ValueType(status))
    if view is None:
        raise InvalidArgument.field("status", f"unknown status {status}")
    return view


class WebhookServicer(webhook_pb2_grpc.WebhookServiceServicer):
    def __init__(self, deps: WebhookDeps):
        self._deps = deps

    async def CreateWebhookEndpoint(
        self, request: webhook_pb2.CreateWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.WebhookEndpoint:
        given = request.webhook_endpoint
        caller = caller_for(f"/{_SERVICE}/CreateWebhookEndpoint", request.request_id)
        endpoint, secret = await use_cases.create_endpoint(
            self._deps, caller, given.url, list(given.event_types), given.description
        )
        return endpoint_to_proto(endpoint, secret)

    async def GetWebhookEndpoint(
        self, request: webhook_pb2.GetWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.WebhookEndpoint:
        return endpoint_to_proto(await use_cases.get_endpoint(self._deps, request.id))

    async def ListWebhookEndpoints(
        self, request: webhook_pb2.ListWebhookEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.ListWebhookEndpointsResponse:
        endpoints, token = await use_cases.list_endpoints(
            self._deps, size=request.page_size, page_token=request.page_token
        )
        return webhook_pb2.ListWebhookEndpointsResponse(
            webhook_endpoints=[endpoint_to_proto(e) for e in endpoints], next_page_token=token
        )

    async def DisableWebhookEndpoint(
        self, request: webhook_pb2.DisableWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.WebhookEndpoint:
        caller = caller_for(f"/{_SERVICE}/DisableWebhookEndpoint", request.request_id)
        return endpoint_to_proto(await use_cases.set_enabled(self._deps, caller, request.id, False))

    async def EnableWebhookEndpoint(
        self, request: webhook_pb2.EnableWebhookEndpointRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.WebhookEndpoint:
        caller = caller_for(f"/{_SERVICE}/EnableWebhookEndpoint", request.request_id)
        return endpoint_to_proto(await use_cases.set_enabled(self._deps, caller, request.id, True))

    async def ListWebhookDeliveries(
        self, request: webhook_pb2.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.ListWebhookDeliveriesResponse:
        deliveries, token = await use_cases.list_deliveries(
            self._deps,
            request.endpoint_id,
            view=_view_of(request.status),
            size=request.page_size,
            page_token=request.page_token,
        )
        return webhook_pb2.ListWebhookDeliveriesResponse(
            webhook_deliveries=[delivery_to_proto(d) for d in deliveries], next_page_token=token
        )

    async def GetWebhookDelivery(
        self, request: webhook_pb2.GetWebhookDeliveryRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.WebhookDelivery:
        return delivery_to_proto(await use_cases.get_delivery(self._deps, request.id))

    async def ListWebhookDeliveryAttempts(
        self, request: webhook_pb2.ListWebhookDeliveryAttemptsRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.ListWebhookDeliveryAttemptsResponse:
        attempts, token = await use_cases.list_attempts(
            self._deps, request.delivery_id, size=request.page_size, page_token=request.page_token
        )
        return webhook_pb2.ListWebhookDeliveryAttemptsResponse(
            attempts=[attempt_to_proto(a) for a in attempts], next_page_token=token
        )

    async def RedeliverWebhook(
        self, request: webhook_pb2.RedeliverWebhookRequest, context: grpc.aio.ServicerContext
    ) -> webhook_pb2.WebhookDelivery:
        caller = caller_for(f"/{_SERVICE}/RedeliverWebhook", request.request_id)
        return delivery_to_proto(await use_cases.redeliver(self._deps, caller, request.delivery_id))

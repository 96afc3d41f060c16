"""gRPC face of the webhook service: decode the proto, call one use case, encode the reply."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from billing_svc.webhooks import use_cases
from billing_svc.webhooks.domain import Endpoint
from billing_svc.webhooks.use_cases import WebhookDeps
from core.principal import caller_for
from tally.billing.v1 import webhook_pb2, webhook_pb2_grpc

_SERVICE = webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name


def endpoint_to_proto(endpoint: Endpoint, secret: str = "") -> webhook_pb2.WebhookEndpoint:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(endpoint.create_time)
    return webhook_pb2.WebhookEndpoint(
        id=endpoint.id,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        description=endpoint.description,
        enabled=endpoint.enabled,
        secret=secret,
        create_time=created,
    )


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

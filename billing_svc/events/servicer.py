"""gRPC face of the event service: decode the proto, call one use case, encode the replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from billing_svc.events import use_cases
from billing_svc.events.use_cases import EventDeps, Query
from core.errors import InvalidArgument
from core.outbox import OutboxEvent
from core.principal import caller_for
from tally.billing.v1 import event_pb2, event_pb2_grpc

_SERVICE = event_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
_Start = event_pb2.WatchEventsRequest.Start
_STARTS = {
    _Start.START_UNSPECIFIED: "",
    _Start.START_NOW: use_cases.START_NOW,
    _Start.START_OLDEST: use_cases.START_OLDEST,
}
# A Struct holds numbers as doubles: integers beyond 2**53 travel as decimal strings, exact.
_EXACT_DOUBLE = 2**53


def _exact(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > _EXACT_DOUBLE:
        return str(value)
    if isinstance(value, dict):
        return {key: _exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exact(item) for item in value]
    return value


def event_to_proto(event: OutboxEvent) -> event_pb2.Event:
    payload = struct_pb2.Struct()
    payload.update(_exact(dict(event.payload)))
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(event.create_time)
    return event_pb2.Event(
        id=event.id,
        type=event.type,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        account_id=event.account_id,
        create_time=created,
        payload=payload,
    )


def _query(request: event_pb2.ListEventsRequest | event_pb2.WatchEventsRequest) -> Query:
    return Query(tuple(request.event_types), request.resource_type, request.resource_id, request.account_id)


class EventServicer(event_pb2_grpc.EventServiceServicer):
    def __init__(self, deps: EventDeps):
        self._deps = deps

    async def ListEvents(
        self, request: event_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> event_pb2.ListEventsResponse:
        events, token = await use_cases.list_events(
            self._deps,
            caller_for(f"/{_SERVICE}/ListEvents"),
            _query(request),
            size=request.page_size,
            page_token=request.page_token,
        )
        return event_pb2.ListEventsResponse(
            events=[event_to_proto(event) for event in events], next_page_token=token
        )

    async def WatchEvents(
        self, request: event_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[event_pb2.WatchEventsResponse]:
        start = _STARTS.get(_Start.ValueType(request.start))
        if start is None:
            raise InvalidArgument.field("start", f"unknown start {request.start}")
        items = use_cases.watch_events(
            self._deps,
            caller_for(f"/{_SERVICE}/WatchEvents"),
            _query(request),
            cursor=request.cursor,
            start=start,
            time_left=context.time_remaining,
        )
        async for item in items:
            if item.event is None:
                yield event_pb2.WatchEventsResponse(cursor=item.cursor)
            else:
                yield event_pb2.WatchEventsResponse(cursor=item.cursor, event=event_to_proto(item.event))

"""gRPC face of AuditService: decode the request, call the use case, encode the page."""

from __future__ import annotations

import grpc
from google.protobuf.struct_pb2 import Struct

from account_svc.audit import use_cases
from account_svc.audit.use_cases import AuditDeps
from core.audit import AuditEvent
from tally.audit.v1 import audit_pb2, audit_pb2_grpc


def event_to_proto(event: AuditEvent) -> audit_pb2.AuditEvent:
    changes = Struct()
    changes.update(dict(event.changes))
    message = audit_pb2.AuditEvent(
        id=event.id,
        actor=event.actor,
        actor_role=event.actor_role,
        method=event.method,
        request_id=event.request_id,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        action=event.action,
        changes=changes,
        trace_id=event.trace_id,
        correlation_id=event.correlation_id,
    )
    message.time.FromDatetime(event.time)
    return message


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, deps: AuditDeps):
        self._deps = deps

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ListAuditEventsResponse:
        page = await use_cases.list_audit_events(
            self._deps,
            size=request.page_size,
            page_token=request.page_token,
            resource_id=request.resource_id,
            actor=request.actor,
        )
        return audit_pb2.ListAuditEventsResponse(
            audit_events=[event_to_proto(e) for e in page.events], next_page_token=page.next_page_token
        )

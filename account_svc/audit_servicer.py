"""gRPC face of AuditService: the audit log, newest first, for admins."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from account_svc.unit_of_work import AccountsUnitOfWork
from core.audit import AuditEvent
from core.pagination import PageTokens
from tally.account.v1 import audit_pb2, audit_pb2_grpc


def event_to_proto(event: AuditEvent) -> audit_pb2.AuditEvent:
    time = Timestamp()
    time.FromDatetime(event.time)
    changes = Struct()
    changes.update(dict(event.changes))
    return audit_pb2.AuditEvent(
        id=event.id,
        time=time,
        actor=event.actor,
        actor_role=event.actor_role,
        method=event.method,
        request_id=event.request_id,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        action=event.action,
        changes=changes,
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, new_reader: Callable[[], AccountsUnitOfWork], page_tokens: PageTokens):
        self._new_reader = new_reader
        self._page_tokens = page_tokens

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ListAuditEventsResponse:
        query = {"resource_id": request.resource_id, "actor": request.actor}
        page = self._page_tokens.keyset_page(request.page_size, request.page_token, query)
        async with self._new_reader() as reader:
            rows = await reader.audit.list(
                resource_id=request.resource_id,
                actor=request.actor,
                before=page.after,
                limit=page.fetch_limit,
            )
        events, token = page.slice(rows, key=lambda event: (event.time, event.id))
        return audit_pb2.ListAuditEventsResponse(
            audit_events=[event_to_proto(e) for e in events], next_page_token=token
        )

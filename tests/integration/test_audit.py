"""Audit events join to their call: the trace id and x-request-id of the access log line, on each backend."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import aiohttp
import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc.audit.unit_of_work import SqlAuditReader
from app.server import App
from core import db
from core.audit import AuditEvent
from core.principal import SYSTEM
from core.request_context import RequestInfo, request_scope
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.audit.v1 import audit_pb2, audit_pb2_grpc
from tests.support import mint

ACCESS = "tally.access"


def new_account(label: str) -> account_pb2.Account:
    return account_pb2.Account(
        display_name=f"{label} Ltd", email=f"{label}-{uuid.uuid4().hex[:8]}@x.test", currency_code="EUR"
    )


async def events_about(channel: grpc.aio.Channel, resource_id: str) -> list[audit_pb2.AuditEvent]:
    reply = await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(resource_id=resource_id)
    )
    return list(reply.audit_events)


def access_lines(caplog: pytest.LogCaptureFixture, method: str) -> list[tuple[str, str]]:
    """(request_id, trace_id) of each access log line for `method`."""
    return [
        (getattr(r, "request_id", ""), getattr(r, "trace_id", ""))
        for r in caplog.records
        if r.name == ACCESS and getattr(r, "method", "").endswith(method)
    ]


async def test_event_carries_the_callers_trace_and_request_id_like_its_access_line(
    app: App, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger=ACCESS)
    trace_id, request_id = uuid.uuid4().hex, f"req-{uuid.uuid4().hex[:12]}"
    metadata = (("x-request-id", request_id), ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"))
    accounts = account_pb2_grpc.AccountServiceStub(channel)

    created = await accounts.CreateAccount(
        account_pb2.CreateAccountRequest(account=new_account("joined"), request_id="idem-1"),
        metadata=metadata,
    )

    (event,) = await events_about(channel, created.id)
    assert (event.action, event.trace_id, event.correlation_id) == ("create", trace_id, request_id)
    assert event.request_id == "idem-1"  # the idempotency key stays apart from the x-request-id
    assert access_lines(caplog, "/CreateAccount") == [(request_id, trace_id)]


async def test_event_of_an_untraced_call_carries_the_ids_the_server_made_up(
    app: App, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger=ACCESS)
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    created = await accounts.CreateAccount(account_pb2.CreateAccountRequest(account=new_account("fresh")))
    await accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=created.id))

    delete, create = await events_about(channel, created.id)
    assert [(e.correlation_id, e.trace_id) for e in (create, delete)] == [
        *access_lines(caplog, "/CreateAccount"),
        *access_lines(caplog, "/DeleteAccount"),
    ]
    assert len(create.trace_id) == 32 and int(create.trace_id, 16)
    assert create.trace_id != delete.trace_id
    assert create.correlation_id != delete.correlation_id


async def test_rest_call_event_carries_the_x_request_id_the_gateway_answered(app: App) -> None:
    trace_id = uuid.uuid4().hex
    headers = {
        "Authorization": f"Bearer {mint(app)}",
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
    }
    body = {"displayName": "Rest Ltd", "email": f"rest-{uuid.uuid4().hex[:8]}@x.test", "currencyCode": "USD"}
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{app.http_port}") as http:
        async with http.post("/v1/accounts", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            answered = response.headers["X-Request-Id"]
            account_id = (await response.json())["id"]
        async with http.get(f"/v1/auditEvents?resourceId={account_id}", headers=headers) as response:
            (event,) = (await response.json())["auditEvents"]
    assert (event["traceId"], event["correlationId"]) == (trace_id, answered)


async def _recorded(engine: AsyncEngine, resource_id: str) -> AuditEvent:
    async with SqlAuditReader(db.session_factory(engine)) as uow:
        await uow.audit.record(
            SYSTEM,
            time=datetime(2027, 1, 1, tzinfo=UTC),
            resource_type="t",
            resource_id=resource_id,
            action="create",
            changes={},
        )
        await uow.session.commit()
        (event,) = await uow.audit.list(resource_id=resource_id, before=None, limit=2)
    return event


async def test_record_reads_the_current_span_and_request(engine: AsyncEngine) -> None:
    outside = await _recorded(engine, "res_outside")
    assert (outside.trace_id, outside.correlation_id) == ("", "")

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("call") as span, request_scope(RequestInfo(request_id="r-42")):
        inside = await _recorded(engine, "res_inside")
    assert inside.trace_id == trace.format_trace_id(span.get_span_context().trace_id)
    assert inside.correlation_id == "r-42"

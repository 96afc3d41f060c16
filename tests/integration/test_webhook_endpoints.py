"""WebhookService over gRPC on both backends: the secret shown once, idempotent create, enable and
disable, non-public targets refused at create."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import select

from app.server import App
from core import db
from core.audit import AuditEventRow
from tally.billing.v1 import webhook_pb2, webhook_pb2_grpc
from tests.support import channel_as, failing, mint

PUBLIC_URL = "https://93.184.216.34/hook"  # a literal public address: no DNS in tests


def create(url: str = PUBLIC_URL, request_id: str = "") -> webhook_pb2.CreateWebhookEndpointRequest:
    return webhook_pb2.CreateWebhookEndpointRequest(
        webhook_endpoint=webhook_pb2.WebhookEndpoint(url=url, event_types=["invoice."], description="ops"),
        request_id=request_id,
    )


async def test_the_secret_is_shown_once_and_a_replay_repeats_the_create(app: App) -> None:
    async with channel_as(app, mint(app)) as channel:
        hooks = webhook_pb2_grpc.WebhookServiceStub(channel)
        first = await hooks.CreateWebhookEndpoint(create(request_id="r-1"))
        again = await hooks.CreateWebhookEndpoint(create(request_id="r-1"))
        other = await hooks.CreateWebhookEndpoint(create())
        assert first.secret.startswith("whsec_") and first.enabled
        assert (again.id, again.secret) == (first.id, first.secret)
        assert other.id != first.id and other.secret != first.secret
        got = await hooks.GetWebhookEndpoint(webhook_pb2.GetWebhookEndpointRequest(id=first.id))
        assert got.secret == "" and got.url == PUBLIC_URL and list(got.event_types) == ["invoice."]
        listed = await hooks.ListWebhookEndpoints(webhook_pb2.ListWebhookEndpointsRequest(page_size=1))
        assert len(listed.webhook_endpoints) == 1 and listed.next_page_token
        assert all(e.secret == "" for e in listed.webhook_endpoints)
        off = await hooks.DisableWebhookEndpoint(webhook_pb2.DisableWebhookEndpointRequest(id=first.id))
        assert not off.enabled
        assert not (
            await hooks.GetWebhookEndpoint(webhook_pb2.GetWebhookEndpointRequest(id=first.id))
        ).enabled
        on = await hooks.EnableWebhookEndpoint(webhook_pb2.EnableWebhookEndpointRequest(id=first.id))
        assert on.enabled
    async with db.UnitOfWork(app.components.platform.writers) as uow:
        statement = select(AuditEventRow).where(AuditEventRow.resource_id == first.id)
        audit = (await uow.session.execute(statement.order_by(AuditEventRow.time))).scalars().all()
    # One row per change (the replay adds none), and never the secret, not even sealed.
    assert [(a.action, a.resource_type) for a in audit] == [
        ("create", "webhook_endpoint"),
        ("disable", "webhook_endpoint"),
        ("enable", "webhook_endpoint"),
    ]
    assert [a.request_id for a in audit] == ["r-1", "", ""]
    assert audit[1].changes == {"enabled": {"before": True, "after": False}}
    assert all("secret" not in str(a.changes) and first.secret not in str(a.changes) for a in audit)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://10.0.0.1/hook", "http://169.254.169.254/", "ftp://x/"]
)
async def test_non_public_targets_are_refused_at_create(app: App, url: str) -> None:
    async with channel_as(app, mint(app)) as channel:
        error = await failing(webhook_pb2_grpc.WebhookServiceStub(channel).CreateWebhookEndpoint(create(url)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_unknown_endpoint_is_not_found(app: App) -> None:
    async with channel_as(app, mint(app)) as channel:
        hooks = webhook_pb2_grpc.WebhookServiceStub(channel)
        error = await failing(hooks.GetWebhookEndpoint(webhook_pb2.GetWebhookEndpointRequest(id="whe_nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND

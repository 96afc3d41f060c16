"""Webhook delivery against a loopback receiver, on SQLite and PostgreSQL: filters, disabled
endpoints, retries on a frozen clock, order per resource, signatures, exclusive claims."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from billing_svc.webhooks import domain
from billing_svc.webhooks.delivery import SEALING_PURPOSE, WebhookDeliverer
from billing_svc.webhooks.domain import Endpoint, secret_associated_data
from billing_svc.webhooks.repository import SqlWebhookRepository
from billing_svc.webhooks.tables import WebhookAttemptRow, WebhookDeliveryRow
from core import db
from core.clock import FrozenClock
from core.sealing import Sealer
from core.settings import Settings
from tests.support import eventually, serving

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
SEALER = Sealer(b"k" * 32, "webhook-secret")


@dataclass
class Receiver:
    fail_first: int
    secret: str = ""
    got: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    requests: int = 0
    url: str = ""
    check_time: bool = False

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests <= self.fail_first:
            return web.Response(status=503)
        body = await request.text()
        headers = dict(request.headers)
        if self.check_time:
            # Raises on a bad signature (or a stale timestamp): a 500, and the test fails.
            message = Webhook(self.secret).verify(body, headers)
        else:
            # The sender's clock is frozen and moved by days: the signature, against its own timestamp.
            sent_at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
            expected = Webhook(self.secret).sign(headers["webhook-id"], sent_at, body)
            if expected not in headers["webhook-signature"].split(" "):
                return web.Response(status=400)
            message = json.loads(body)
        self.got.append((request.headers["webhook-id"], message))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver(fail_first=2, secret=domain.new_secret())
    app = web.Application()
    app.router.add_post("/hook", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    got.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield got
    finally:
        await runner.cleanup()


async def add_endpoint(
    engine: AsyncEngine, url: str, secret: str, types: tuple[str, ...], enabled: bool = True
) -> str:
    endpoint_id = f"whe_{len(types)}_{enabled}_{url[-6:]}"
    sealed = SEALER.seal(secret.encode(), secret_associated_data(endpoint_id))
    async with db.UnitOfWork(db.session_factory(engine)) as uow:
        await SqlWebhookRepository(uow.session).add_endpoint(
            Endpoint(endpoint_id, url, types, "test", sealed, enabled, T0)
        )
        await uow.commit()
    return endpoint_id


async def emit(engine: AsyncEngine, clock: FrozenClock, *events: tuple[str, str]) -> None:
    for number, (event_type, resource_id) in enumerate(events):
        async with db.UnitOfWork(db.session_factory(engine), clock=clock) as uow:
            uow.emit(event_type, ("invoice", resource_id), {"n": number, "amount": 10**18 + number})
            await uow.commit()


def deliverer(engine: AsyncEngine, clock: FrozenClock) -> WebhookDeliverer:
    return WebhookDeliverer(db.session_factory(engine), clock, SEALER, allow_private_targets=True)


def test_the_retry_schedule_covers_three_days() -> None:
    assert sum(domain.RETRY_SCHEDULE, timedelta()) >= timedelta(days=3)
    attempts = len(domain.RETRY_SCHEDULE)
    assert domain.next_due(1, T0) == T0 + timedelta(seconds=5)
    assert domain.next_due(attempts, T0) is not None
    assert domain.next_due(attempts + 1, T0) is None


def test_filters() -> None:
    assert domain.matches((), "invoice.paid")
    assert domain.matches(("invoice.",), "invoice.paid")
    assert not domain.matches(("invoice.created",), "invoice.paid")
    assert domain.new_secret().startswith("whsec_")


async def test_every_event_arrives_signed_in_order_despite_failures(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    clock = FrozenClock(T0)
    await add_endpoint(engine, receiver.url, receiver.secret, ("invoice.",))
    await add_endpoint(engine, receiver.url + "x", "whsec_" + "A" * 44, ("invoice.",), enabled=False)
    await add_endpoint(engine, receiver.url + "y", "whsec_" + "B" * 44, ("plan.",))
    await emit(
        engine,
        clock,
        ("invoice.created", "in_a"),
        ("invoice.created", "in_b"),
        ("invoice.paid", "in_a"),
        ("subscription.created", "in_a"),
        ("invoice.voided", "in_a"),
    )
    work = deliverer(engine, clock)
    for _ in range(50):  # bounded: each round moves the frozen clock past any retry's due time
        await work.run_pass()
        if len(receiver.got) >= 4:
            break
        clock.advance(timedelta(hours=1))
    types_for_a = [m["type"] for _, m in receiver.got if m["data"]["n"] in (0, 2, 4)]  # type: ignore[index]
    assert types_for_a == ["invoice.created", "invoice.paid", "invoice.voided"]
    assert len({event_id for event_id, _ in receiver.got}) == 4 == len(receiver.got)
    assert all(m["data"]["amount"] >= 10**18 for _, m in receiver.got)  # type: ignore[index]
    async with db.UnitOfWork(db.session_factory(engine)) as uow:
        deliveries = (await uow.session.execute(select(WebhookDeliveryRow))).scalars().all()
        attempts = (await uow.session.execute(select(WebhookAttemptRow))).scalars().all()
    assert len(deliveries) == 4  # only the enabled endpoint whose filter matches
    assert {d.status for d in deliveries} == {domain.DELIVERED}
    assert sorted(a.http_status for a in attempts) == [204] * 4 + [503, 503]


async def test_a_delivery_fails_once_the_schedule_is_spent(engine: AsyncEngine, receiver: Receiver) -> None:
    receiver.fail_first = 10**6
    clock = FrozenClock(T0)
    await add_endpoint(engine, receiver.url, receiver.secret, ())
    await emit(engine, clock, ("invoice.created", "in_a"))
    work = deliverer(engine, clock)
    for _ in range(len(domain.RETRY_SCHEDULE) + 1):
        await work.run_pass()
        clock.advance(timedelta(days=1))
    async with db.UnitOfWork(db.session_factory(engine)) as uow:
        (delivery,) = (await uow.session.execute(select(WebhookDeliveryRow))).scalars().all()
    assert delivery.status == domain.FAILED
    assert delivery.due_time is None
    assert delivery.attempt_count == len(domain.RETRY_SCHEDULE) + 1


async def test_loopback_targets_are_refused_by_default(engine: AsyncEngine, receiver: Receiver) -> None:
    clock = FrozenClock(T0)
    await add_endpoint(engine, receiver.url, receiver.secret, ())
    await emit(engine, clock, ("invoice.created", "in_a"))
    work = WebhookDeliverer(db.session_factory(engine), clock, SEALER)
    assert await work.run_pass() == 0
    assert receiver.requests == 0
    async with db.UnitOfWork(db.session_factory(engine)) as uow:
        (attempt,) = (await uow.session.execute(select(WebhookAttemptRow))).scalars().all()
    assert attempt.http_status == 0 and "refused target" in attempt.error


async def test_two_workers_never_send_one_delivery_twice(pg_engine: AsyncEngine, receiver: Receiver) -> None:
    from app import migrate

    await migrate.upgrade(pg_engine)
    receiver.fail_first, receiver.check_time = 0, True
    clock = FrozenClock(datetime.now(UTC))  # the receiver checks the timestamp against its wall clock
    await add_endpoint(pg_engine, receiver.url, receiver.secret, ())
    await emit(pg_engine, clock, *[("invoice.created", f"in_{n}") for n in range(20)])
    first, second = deliverer(pg_engine, clock), deliverer(pg_engine, clock)
    sent = await asyncio.gather(first.run_pass(), second.run_pass())
    assert sum(sent) == 20 == len(receiver.got)
    assert len({event_id for event_id, _ in receiver.got}) == 20


async def test_tally_serve_runs_the_delivery_job(settings: Settings, receiver: Receiver) -> None:
    receiver.fail_first, receiver.check_time = 0, True
    configured = settings.model_copy(
        update={
            "webhook_delivery": True,
            "webhook_allow_private_targets": True,
            "webhook_delivery_interval_seconds": 0.05,
        }
    )
    async with serving(configured) as app:
        assert app.webhooks is not None
        sealer = app.components.platform.server_key.sealer(SEALING_PURPOSE)
        sealed = sealer.seal(receiver.secret.encode(), secret_associated_data("whe_served"))
        async with db.UnitOfWork(app.components.platform.writers) as uow:
            await SqlWebhookRepository(uow.session).add_endpoint(
                Endpoint("whe_served", receiver.url, (), "served", sealed, True, T0)
            )
            await uow.commit()
        async with db.UnitOfWork(app.components.platform.writers) as uow:
            uow.emit("invoice.created", ("invoice", "in_served"), {"amount_minor": 1250})
            await uow.commit()

        async def arrived() -> bool:
            return len(receiver.got) == 1

        await eventually(arrived, within=10, what="the served job delivers the event")
    assert receiver.got[0][1]["data"] == {"amount_minor": 1250}

"""Webhook delivery against a loopback receiver, on SQLite and PostgreSQL: filters, disabled
endpoints, retries on a frozen clock, order per resource, signatures, exclusive claims."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.server import App
from billing_svc.webhooks import domain
from billing_svc.webhooks.delivery import SEALING_PURPOSE, WebhookDeliverer
from billing_svc.webhooks.domain import Endpoint, secret_associated_data
from billing_svc.webhooks.repository import SqlWebhookRepository
from billing_svc.webhooks.tables import WebhookAttemptRow, WebhookDeliveryRow
from core import db
from core.audit import AuditEventRow
from core.clock import FrozenClock
from core.sealing import Sealer
from core.settings import Settings
from tally.billing.v1 import webhook_pb2
from tally.billing.v1.webhook_pb2_grpc import WebhookServiceStub
from tests.integration.test_gateway import Gateway
from tests.support import channel_as, eventually, failing, mint, serving
from tests.webhook_receiver import Receiver, receiving

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
SEALER = Sealer(b"k" * 32, "webhook-secret")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving(Receiver(fail_first=2, secret=domain.new_secret())) as got:
        yield got


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


async def test_running_until_idle_fans_out_every_batch_and_leaves_failures_to_their_schedule(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    receiver.fail_first = 10**6  # every request refused: nothing is delivered, and the run ends
    clock = FrozenClock(T0)
    await add_endpoint(engine, receiver.url, receiver.secret, ("invoice.created",))
    await emit(engine, clock, *[("invoice.created", f"in_{n}") for n in range(5)])
    await emit(engine, clock, *[("plan.created", f"pl_{n}") for n in range(7)])  # filtered out
    work = WebhookDeliverer(db.session_factory(engine), clock, SEALER, allow_private_targets=True, batch=3)
    report = await work.run_until_idle()
    # 12 events in batches of 3; each of the 5 deliveries tried once, then due again 5 s later.
    assert (report.events, report.made, report.claimed, report.delivered) == (12, 5, 5, 0)
    assert receiver.requests == 5
    assert report.summary() == "12 events fanned out into 5 deliveries; 5 deliveries claimed; 0 delivered"
    receiver.fail_first = 0
    clock.advance(domain.RETRY_SCHEDULE[0])
    again = await work.run_until_idle()
    assert (again.events, again.claimed, again.delivered) == (0, 5, 5)
    assert sorted(int(m["data"]["n"]) for _, m in receiver.got) == [0, 1, 2, 3, 4]  # type: ignore[index]


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
        # The served job reports to the app's metrics (the outcome is counted after its record).

        async def counted() -> bool:
            return outcomes(app)["succeeded"] == 1.0

        await eventually(counted, within=10, what="the served job counts its outcome")
    assert receiver.got[0][1]["data"] == {"amount_minor": 1250}


# --- the deliveries API: listing, redelivery, metrics (the real server, the job driven by hand) ----


@asynccontextmanager
async def served_hooks(
    settings: Settings, receiver: Receiver
) -> AsyncIterator[tuple[App, WebhookServiceStub, str]]:
    """The server without its delivery job (the test runs passes), an endpoint on the receiver
    made through the API (its secret given to the receiver), and a stub for the admin."""
    configured = settings.model_copy(
        update={"webhook_allow_private_targets": True, "webhook_delivery": False}
    )
    async with serving(configured) as app, channel_as(app, mint(app)) as channel:
        hooks = WebhookServiceStub(channel)
        made = await hooks.CreateWebhookEndpoint(
            webhook_pb2.CreateWebhookEndpointRequest(
                webhook_endpoint=webhook_pb2.WebhookEndpoint(url=receiver.url + "?token=s3cr3t")
            )
        )
        receiver.secret = made.secret
        yield app, hooks, made.id


def served_deliverer(app: App, clock: FrozenClock) -> WebhookDeliverer:
    platform = app.components.platform
    return WebhookDeliverer(
        platform.writers,
        clock,
        platform.server_key.sealer(SEALING_PURPOSE),
        allow_private_targets=True,
        on_outcome=app.metrics.webhook_delivered,
        on_backlog=app.metrics.webhook_backlog,
    )


async def emit_served(app: App, *resource_ids: str) -> None:
    for number, resource_id in enumerate(resource_ids):
        async with db.UnitOfWork(app.components.platform.writers) as uow:
            uow.emit("invoice.created", ("invoice", resource_id), {"n": number})
            await uow.commit()


def outcomes(app: App) -> dict[str, float]:
    return {
        outcome: app.metrics.registry.get_sample_value("tally_webhook_deliveries_total", {"outcome": outcome})
        or 0.0
        for outcome in ("succeeded", "retried", "failed")
    }


Status = webhook_pb2.WebhookDelivery.Status


def listing(
    endpoint_id: str,
    status: Status.ValueType = Status.STATUS_UNSPECIFIED,
    page_size: int = 0,
    page_token: str = "",
) -> webhook_pb2.ListWebhookDeliveriesRequest:
    return webhook_pb2.ListWebhookDeliveriesRequest(
        endpoint_id=endpoint_id, status=status, page_size=page_size, page_token=page_token
    )


async def test_deliveries_are_listed_by_page_and_status(settings: Settings, receiver: Receiver) -> None:
    receiver.fail_first = 0
    async with served_hooks(settings, receiver) as (app, hooks, endpoint_id):
        await emit_served(app, "in_a", "in_b", "in_c")
        clock = FrozenClock(datetime.now(UTC) + timedelta(seconds=1))
        work = served_deliverer(app, clock)
        await work.fan_out()
        pending = await hooks.ListWebhookDeliveries(listing(endpoint_id))
        assert [d.status for d in pending.webhook_deliveries] == [Status.STATUS_PENDING] * 3
        assert all(
            d.attempt_count == 0 and d.HasField("next_attempt_time") for d in pending.webhook_deliveries
        )
        receiver.fail_first = 1  # the first POST fails: one delivery retries, two succeed
        assert await work.run_pass() == 2
        assert app.metrics.registry.get_sample_value("tally_webhook_deliveries_due") == 3.0
        assert await work.run_pass() == 0  # the retry is due in 5 s, on a clock that stands still
        assert app.metrics.registry.get_sample_value("tally_webhook_deliveries_due") == 0.0
        seen: list[webhook_pb2.WebhookDelivery] = []
        token = ""
        while True:
            page = await hooks.ListWebhookDeliveries(listing(endpoint_id, page_size=2, page_token=token))
            assert len(page.webhook_deliveries) <= 2
            seen.extend(page.webhook_deliveries)
            token = page.next_page_token
            if not token:
                break
        assert sorted(d.resource_id for d in seen) == ["in_a", "in_b", "in_c"]
        assert [d.id for d in seen] == [d.id for d in pending.webhook_deliveries]
        retrying = await hooks.ListWebhookDeliveries(listing(endpoint_id, Status.STATUS_RETRYING))
        (retry,) = retrying.webhook_deliveries
        assert (retry.attempt_count, retry.last_response_status_code) == (1, 503)
        assert retry.HasField("next_attempt_time") and retry.HasField("last_attempt_time")
        assert "s3cr3t" not in retry.last_error
        succeeded = await hooks.ListWebhookDeliveries(listing(endpoint_id, Status.STATUS_SUCCEEDED))
        assert len(succeeded.webhook_deliveries) == 2
        assert all(not d.HasField("next_attempt_time") for d in succeeded.webhook_deliveries)
        assert {d.last_response_status_code for d in succeeded.webhook_deliveries} == {204}
        assert not (
            await hooks.ListWebhookDeliveries(listing(endpoint_id, Status.STATUS_FAILED))
        ).webhook_deliveries
        assert not (
            await hooks.ListWebhookDeliveries(listing(endpoint_id, Status.STATUS_PENDING))
        ).webhook_deliveries
        got = await hooks.GetWebhookDelivery(webhook_pb2.GetWebhookDeliveryRequest(id=retry.id))
        assert got == retry
        assert outcomes(app) == {"succeeded": 2.0, "retried": 1.0, "failed": 0.0}
        # A token is for its own listing: another status filter refuses it.
        page = await hooks.ListWebhookDeliveries(listing(endpoint_id, page_size=1))
        error = await failing(
            hooks.ListWebhookDeliveries(listing(endpoint_id, Status.STATUS_FAILED, 1, page.next_page_token))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        unknown = await failing(hooks.ListWebhookDeliveries(listing("whe_nope")))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        bad = await failing(hooks.ListWebhookDeliveries(listing(endpoint_id, Status.ValueType(99))))
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_succeeded_delivery_is_sent_again_once_per_request_id(
    settings: Settings, receiver: Receiver
) -> None:
    receiver.fail_first, receiver.check_time = 0, True  # standardwebhooks verifies, timestamp too
    async with served_hooks(settings, receiver) as (app, hooks, endpoint_id):
        await emit_served(app, "in_a")
        clock = FrozenClock(datetime.now(UTC) + timedelta(seconds=1))
        work = served_deliverer(app, clock)
        assert await work.run_pass() == 1
        (delivery,) = (await hooks.ListWebhookDeliveries(listing(endpoint_id))).webhook_deliveries
        assert delivery.status == Status.STATUS_SUCCEEDED
        again = webhook_pb2.RedeliverWebhookRequest(delivery_id=delivery.id, request_id="redo-1")
        first = await hooks.RedeliverWebhook(again)
        assert first.status == Status.STATUS_RETRYING and first.HasField("next_attempt_time")
        clock.advance(timedelta(minutes=1))
        assert await work.run_pass() == 1
        # A replay answers the first call's delivery and schedules nothing.
        assert await hooks.RedeliverWebhook(again) == first
        clock.advance(timedelta(minutes=1))
        assert await work.run_pass() == 0
        assert [event_id for event_id, _ in receiver.got] == [delivery.event_id] * 2
        done = await hooks.GetWebhookDelivery(webhook_pb2.GetWebhookDeliveryRequest(id=delivery.id))
        assert (done.status, done.attempt_count) == (Status.STATUS_SUCCEEDED, 2)
        assert outcomes(app)["succeeded"] == 2.0
        async with db.UnitOfWork(app.components.platform.writers) as uow:
            audit = (
                (
                    await uow.session.execute(
                        select(AuditEventRow).where(AuditEventRow.resource_id == delivery.id)
                    )
                )
                .scalars()
                .all()
            )
        assert [(a.action, a.request_id) for a in audit] == [("redeliver", "redo-1")]
        assert audit[0].changes["status"] == {"before": "succeeded", "after": "retrying"}


async def test_a_given_up_delivery_comes_back_with_a_fresh_attempt(
    settings: Settings, receiver: Receiver
) -> None:
    receiver.fail_first = 10**6
    async with served_hooks(settings, receiver) as (app, hooks, endpoint_id):
        await emit_served(app, "in_a")
        clock = FrozenClock(datetime.now(UTC) + timedelta(seconds=1))
        work = served_deliverer(app, clock)
        for _ in range(len(domain.RETRY_SCHEDULE) + 1):
            await work.run_pass()
            clock.advance(timedelta(days=1))
        (failed,) = (
            await hooks.ListWebhookDeliveries(listing(endpoint_id, Status.STATUS_FAILED))
        ).webhook_deliveries
        assert failed.attempt_count == len(domain.RETRY_SCHEDULE) + 1 and not failed.HasField(
            "next_attempt_time"
        )
        assert outcomes(app) == {"succeeded": 0.0, "retried": len(domain.RETRY_SCHEDULE), "failed": 1.0}
        receiver.fail_first = 0
        back = await hooks.RedeliverWebhook(webhook_pb2.RedeliverWebhookRequest(delivery_id=failed.id))
        assert back.status == Status.STATUS_RETRYING
        assert await work.run_pass() == 1
        ((event_id, message),) = receiver.got
        assert event_id == failed.event_id and message["data"] == {"n": 0}
        done = await hooks.GetWebhookDelivery(webhook_pb2.GetWebhookDeliveryRequest(id=failed.id))
        assert (done.status, done.last_response_status_code, done.last_error) == (
            Status.STATUS_SUCCEEDED,
            204,
            "",
        )


async def test_a_delivery_of_a_disabled_endpoint_is_not_redelivered(
    settings: Settings, receiver: Receiver
) -> None:
    receiver.fail_first = 0
    async with served_hooks(settings, receiver) as (app, hooks, endpoint_id):
        await emit_served(app, "in_a")
        clock = FrozenClock(datetime.now(UTC) + timedelta(seconds=1))
        work = served_deliverer(app, clock)
        assert await work.run_pass() == 1
        (delivery,) = (await hooks.ListWebhookDeliveries(listing(endpoint_id))).webhook_deliveries
        await hooks.DisableWebhookEndpoint(webhook_pb2.DisableWebhookEndpointRequest(id=endpoint_id))
        error = await failing(
            hooks.RedeliverWebhook(webhook_pb2.RedeliverWebhookRequest(delivery_id=delivery.id))
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert endpoint_id in (error.details() or "")
        unchanged = await hooks.GetWebhookDelivery(webhook_pb2.GetWebhookDeliveryRequest(id=delivery.id))
        assert unchanged == delivery
        missing = await failing(
            hooks.RedeliverWebhook(webhook_pb2.RedeliverWebhookRequest(delivery_id="whd_nope"))
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        missing = await failing(
            hooks.GetWebhookDelivery(webhook_pb2.GetWebhookDeliveryRequest(id="whd_nope"))
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND


def attempts_of(
    delivery_id: str, page_size: int = 0, page_token: str = ""
) -> webhook_pb2.ListWebhookDeliveryAttemptsRequest:
    return webhook_pb2.ListWebhookDeliveryAttemptsRequest(
        delivery_id=delivery_id, page_size=page_size, page_token=page_token
    )


async def test_a_deliverys_attempts_are_listed_oldest_first_by_page(
    settings: Settings, receiver: Receiver
) -> None:
    receiver.fail_first = 3  # in_a's first two POSTs fail and in_b's first; then all are answered 204
    async with served_hooks(settings, receiver) as (app, hooks, endpoint_id):
        await emit_served(app, "in_a", "in_b")
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        clock = FrozenClock(start)
        work = served_deliverer(app, clock)
        await work.fan_out()
        made = (await hooks.ListWebhookDeliveries(listing(endpoint_id))).webhook_deliveries
        first, second = sorted(made, key=lambda d: d.resource_id)  # in_a's, in_b's
        assert list((await hooks.ListWebhookDeliveryAttempts(attempts_of(first.id))).attempts) == []
        assert await work.run_pass() == 0
        clock.advance(timedelta(minutes=1))  # past the first retry's 5 s
        assert await work.run_pass() == 1  # in_a fails again, in_b is delivered
        clock.advance(timedelta(hours=1))  # past in_a's second retry's 5 min
        assert await work.run_pass() == 1

        listed = await hooks.ListWebhookDeliveryAttempts(attempts_of(first.id))
        got = [(a.response_status_code, a.attempt_time.ToDatetime(tzinfo=UTC)) for a in listed.attempts]
        moved = start + timedelta(minutes=1)
        assert got == [(503, start), (503, moved), (204, moved + timedelta(hours=1))]
        assert [a.error for a in listed.attempts] == ["Service Unavailable", "Service Unavailable", ""]
        assert all(a.delivery_id == first.id and a.id.startswith("wha_") for a in listed.attempts)
        assert all(a.duration_ms >= 0 for a in listed.attempts) and listed.next_page_token == ""
        # The delivery sums up the same attempts.
        done = await hooks.GetWebhookDelivery(webhook_pb2.GetWebhookDeliveryRequest(id=first.id))
        assert (done.status, done.attempt_count) == (Status.STATUS_SUCCEEDED, len(listed.attempts))
        assert done.last_attempt_time == listed.attempts[-1].attempt_time
        other = (await hooks.ListWebhookDeliveryAttempts(attempts_of(second.id))).attempts
        assert [(a.response_status_code, a.attempt_time.ToDatetime(tzinfo=UTC)) for a in other] == [
            (503, start),
            (204, moved),
        ]

        # By page; a token is for its own delivery's attempts.
        page = await hooks.ListWebhookDeliveryAttempts(attempts_of(first.id, page_size=2))
        rest = await hooks.ListWebhookDeliveryAttempts(attempts_of(first.id, 2, page.next_page_token))
        assert [*page.attempts, *rest.attempts] == list(listed.attempts)
        assert len(page.attempts) == 2 and rest.next_page_token == ""
        error = await failing(
            hooks.ListWebhookDeliveryAttempts(attempts_of(second.id, 2, page.next_page_token))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        for unknown in ("whd_nope", ""):
            missing = await failing(hooks.ListWebhookDeliveryAttempts(attempts_of(unknown)))
            assert missing.code() == grpc.StatusCode.NOT_FOUND, unknown

        # Over REST, by the route the proto binds.
        async with Gateway(app) as http:
            headers = {"Authorization": f"Bearer {mint(app)}"}
            path = f"/v1/webhookDeliveries/{first.id}/attempts"
            async with http.get(path, params={"pageSize": "2"}, headers=headers) as answer:
                body = await answer.json()
                assert answer.status == 200, body
                assert [a["responseStatusCode"] for a in body["attempts"]] == [503, 503]
                token = body["nextPageToken"]
            async with http.get(path, params={"pageToken": token}, headers=headers) as answer:
                assert [a["id"] for a in (await answer.json())["attempts"]] == [listed.attempts[2].id]
            async with http.get("/v1/webhookDeliveries/whd_nope/attempts", headers=headers) as answer:
                assert answer.status == 404

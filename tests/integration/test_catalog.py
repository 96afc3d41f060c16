"""The billing catalog through a real in-process gRPC server, on each backend: MeterService, the
helpers that test_catalog_plans.py and test_catalog_gateway.py share, and races on PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.type import decimal_pb2
from sqlalchemy import select

from app.server import App
from billing_svc.catalog.plan_reader import SqlPlanReader
from core import db, outbox
from core.audit import AuditEventRow
from core.settings import Settings
from tally.billing.v1 import meter_pb2, meter_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tally.type.v1 import money_pb2
from tests.integration.test_concurrency import waits_on_lock
from tests.support import asyncpg_dsn, channel_as, details, failing, mint, serving

Meter = meter_pb2.Meter
Plan = plan_pb2.Plan


@pytest.fixture
def meters(channel: grpc.aio.Channel) -> meter_pb2_grpc.MeterServiceStub:
    return meter_pb2_grpc.MeterServiceStub(channel)


async def create_meter(
    stub: meter_pb2_grpc.MeterServiceStub, code: str = "api_calls", request_id: str = "", **overrides: Any
) -> Meter:
    values: dict[str, Any] = {
        "code": code,
        "display_name": f"Meter {code}",
        "unit_label": "call",
        "aggregation": Meter.AGGREGATION_SUM,
    }
    values.update(overrides)
    request = meter_pb2.CreateMeterRequest(meter=Meter(**values), request_id=request_id)
    return await stub.CreateMeter(request)


async def events(app: App, resource_type: str) -> list[outbox.OutboxEvent]:
    async with db.session_factory(db.read_only(app.engine))() as session:
        found = await outbox.read_events(session, 0, 1000)
    return [event for event in found if event.resource_type == resource_type]


async def audit_rows(app: App, resource_id: str) -> list[AuditEventRow]:
    async with db.session_factory(db.read_only(app.engine))() as session:
        statement = (
            select(AuditEventRow)
            .where(AuditEventRow.resource_id == resource_id)
            .order_by(AuditEventRow.time, AuditEventRow.id)
        )
        return list((await session.execute(statement)).scalars())


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


# --- meters --------------------------------------------------------------------------------------


async def test_meter_create_get_update_archive(app: App, meters: meter_pb2_grpc.MeterServiceStub) -> None:
    created = await create_meter(
        meters, "storage.gb", unit_label="GB", aggregation=Meter.AGGREGATION_WEIGHTED_SUM
    )
    assert created.id.startswith("mtr_")
    assert created.create_time == created.update_time
    assert not created.HasField("archive_time")
    assert await meters.GetMeter(meter_pb2.GetMeterRequest(id=created.id)) == created

    updated = await meters.UpdateMeter(
        meter_pb2.UpdateMeterRequest(
            meter=Meter(id=created.id, display_name="Storage", unit_label="ignored"),
            update_mask=mask("display_name"),
            request_id="rename-storage",
        )
    )
    assert (updated.display_name, updated.unit_label) == ("Storage", "GB")
    assert updated.etag != created.etag

    archived = await meters.ArchiveMeter(meter_pb2.ArchiveMeterRequest(id=created.id))
    assert archived.HasField("archive_time")
    again = await meters.ArchiveMeter(meter_pb2.ArchiveMeterRequest(id=created.id))
    assert again == archived  # archiving an archived meter returns it unchanged

    kinds = [(e.type, e.payload["id"], e.payload["code"]) for e in await events(app, "meter")]
    assert kinds == [
        ("meter.created", created.id, "storage.gb"),
        ("meter.updated", created.id, "storage.gb"),
        ("meter.archived", created.id, "storage.gb"),
    ]
    rows = await audit_rows(app, created.id)
    assert [(row.resource_type, row.action) for row in rows] == [
        ("meter", "create"),
        ("meter", "update"),
        ("meter", "archive"),
    ]
    assert rows[1].changes == {"display_name": {"before": "Meter storage.gb", "after": "Storage"}}
    assert rows[1].request_id == "rename-storage"


async def test_meter_rules_name_the_fields(meters: meter_pb2_grpc.MeterServiceStub) -> None:
    error = await failing(
        create_meter(meters, "Bad Code", display_name="", unit_label="u" * 41, aggregation=0, property="x")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(error).violations) == {
        "meter.code",
        "meter.display_name",
        "meter.unit_label",
        "meter.aggregation",
    }
    error = await failing(create_meter(meters, aggregation=Meter.AGGREGATION_UNIQUE_COUNT))
    assert set(details(error).violations) == {"meter.property"}
    error = await failing(create_meter(meters, property="user_id"))
    assert "AGGREGATION_UNIQUE_COUNT" in details(error).violations["meter.property"]
    error = await failing(create_meter(meters, aggregation=42))
    assert set(details(error).violations) == {"meter.aggregation"}

    unique = await create_meter(
        meters, "users", aggregation=Meter.AGGREGATION_UNIQUE_COUNT, property="user_id"
    )
    assert unique.property == "user_id"


async def test_meter_code_taken_and_not_found(meters: meter_pb2_grpc.MeterServiceStub) -> None:
    await create_meter(meters, "api_calls")
    error = await failing(create_meter(meters, "api_calls", display_name="Other"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(error).reason == "METER_CODE_TAKEN"

    error = await failing(meters.GetMeter(meter_pb2.GetMeterRequest(id="mtr_00000000000000000000000000")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert details(error).reason == "METER_NOT_FOUND"
    error = await failing(meters.GetMeter(meter_pb2.GetMeterRequest(id="x" * 300)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_meter_update_rules(meters: meter_pb2_grpc.MeterServiceStub) -> None:
    created = await create_meter(meters)
    # Immutable fields may be sent back unchanged, never changed.
    same = await meters.UpdateMeter(
        meter_pb2.UpdateMeterRequest(
            meter=Meter(
                id=created.id, code=created.code, aggregation=created.aggregation, display_name="API"
            ),
            update_mask=mask("code", "aggregation", "display_name"),
        )
    )
    assert (same.code, same.display_name) == (created.code, "API")
    error = await failing(
        meters.UpdateMeter(
            meter_pb2.UpdateMeterRequest(meter=Meter(id=created.id, code="renamed"), update_mask=mask("code"))
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "meter.code" in details(error).violations

    for paths, where in ((["create_time"], "update_mask"), (["colour"], "update_mask")):
        error = await failing(
            meters.UpdateMeter(
                meter_pb2.UpdateMeterRequest(meter=Meter(id=created.id), update_mask=mask(*paths))
            )
        )
        assert where in details(error).violations
    error = await failing(meters.UpdateMeter(meter_pb2.UpdateMeterRequest(meter=Meter(id=created.id))))
    assert "update_mask" in details(error).violations  # nothing set, nothing named

    # Without a mask, the updatable fields that are set change.
    relabeled = await meters.UpdateMeter(
        meter_pb2.UpdateMeterRequest(meter=Meter(id=created.id, unit_label="request"))
    )
    assert (relabeled.unit_label, relabeled.display_name) == ("request", "API")

    error = await failing(
        meters.UpdateMeter(
            meter_pb2.UpdateMeterRequest(meter=Meter(id=created.id, display_name="Stale", etag=created.etag))
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED
    assert details(error).reason == "ETAG_MISMATCH"


async def test_meter_request_id_replay_and_reuse(app: App, meters: meter_pb2_grpc.MeterServiceStub) -> None:
    first = await create_meter(meters, "replayed", request_id="create-replayed")
    assert await create_meter(meters, "replayed", request_id="create-replayed") == first
    error = await failing(
        create_meter(meters, "replayed", request_id="create-replayed", display_name="Other")
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error).reason == "REQUEST_ID_REUSED"
    assert [e.type for e in await events(app, "meter")] == ["meter.created"]


async def test_meter_listing_pages_and_hides_archived(meters: meter_pb2_grpc.MeterServiceStub) -> None:
    created = [await create_meter(meters, f"meter_{n}") for n in range(5)]
    await meters.ArchiveMeter(meter_pb2.ArchiveMeterRequest(id=created[1].id))

    seen: list[str] = []
    token = ""
    while True:
        page = await meters.ListMeters(meter_pb2.ListMetersRequest(page_size=2, page_token=token))
        seen += [meter.id for meter in page.meters]
        token = page.next_page_token
        if not token:
            break
    assert seen == [created[n].id for n in (0, 2, 3, 4)]

    everything = await meters.ListMeters(meter_pb2.ListMetersRequest(show_archived=True))
    assert [meter.id for meter in everything.meters] == [meter.id for meter in created]

    first = await meters.ListMeters(meter_pb2.ListMetersRequest(page_size=1))
    error = await failing(
        meters.ListMeters(meter_pb2.ListMetersRequest(page_token=first.next_page_token, show_archived=True))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in details(error).violations


# --- plans ---------------------------------------------------------------------------------------


def dec(value: str) -> decimal_pb2.Decimal:
    return decimal_pb2.Decimal(value=value)


def usd(minor: int, currency: str = "USD") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=minor)


def per_unit(price: str) -> plan_pb2.Price:
    return plan_pb2.Price(per_unit=plan_pb2.PerUnitPrice(unit_price=dec(price)))


def graduated(*tiers: tuple[str | None, str]) -> plan_pb2.Price:
    message = plan_pb2.TieredPrice()
    for up_to, price in tiers:
        tier = message.tiers.add(unit_price=dec(price))
        if up_to is not None:
            tier.up_to.CopyFrom(dec(up_to))
    return plan_pb2.Price(graduated=message)


def new_plan(code: str = "pro-monthly", **overrides: Any) -> Plan:
    values: dict[str, Any] = {
        "code": code,
        "display_name": f"Plan {code}",
        "currency_code": "USD",
        "billing_interval": plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_MONTH),
        "base_fee": usd(2900),
    }
    values.update(overrides)
    return Plan(**values)


async def create_plan(
    stub: plan_pb2_grpc.PlanServiceStub, code: str = "pro-monthly", request_id: str = "", **overrides: Any
) -> Plan:
    return await stub.CreatePlan(
        plan_pb2.CreatePlanRequest(plan=new_plan(code, **overrides), request_id=request_id)
    )


async def update_plan(
    stub: plan_pb2_grpc.PlanServiceStub, plan: Plan, *paths: str, request_id: str = ""
) -> Plan:
    return await stub.UpdatePlan(
        plan_pb2.UpdatePlanRequest(plan=plan, update_mask=mask(*paths), request_id=request_id)
    )


async def mark_in_use(app: App, plan_id: str, version: int) -> None:
    """What the subscription module does when a subscription first takes a version."""
    async with db.UnitOfWork(db.session_factory(app.engine)) as uow:
        reader = SqlPlanReader(uow.session)
        found = await reader.version(plan_id, version, lock=True)
        assert found is not None and not found.in_use
        await reader.mark_in_use(plan_id, version)
        await uow.commit()


# --- races (PostgreSQL: SQLite has one writer at a time) ------------------------------------------


@pytest.mark.postgres
async def test_racing_creates_with_one_code_exactly_one_wins(
    postgres_settings: Settings, postgres_clean: None
) -> None:
    async with serving(postgres_settings) as app, channel_as(app, mint(app)) as channel:
        meter_stub = meter_pb2_grpc.MeterServiceStub(channel)
        plan_stub = plan_pb2_grpc.PlanServiceStub(channel)
        for make, reason in (
            (lambda n: create_meter(meter_stub, "raced", display_name=f"Racer {n}"), "METER_CODE_TAKEN"),
            (lambda n: create_plan(plan_stub, "raced", display_name=f"Racer {n}"), "PLAN_CODE_TAKEN"),
        ):
            results = await asyncio.gather(*(make(n) for n in range(5)), return_exceptions=True)
            losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(results) - len(losers) == 1, results
            assert {(e.code(), details(e).reason) for e in losers} == {
                (grpc.StatusCode.ALREADY_EXISTS, reason)
            }


@pytest.mark.postgres
async def test_a_price_change_waits_for_a_subscription_taking_the_version(
    postgres_settings: Settings, postgres_clean: None, postgres_url: str
) -> None:
    async with serving(postgres_settings) as app, channel_as(app, mint(app)) as channel:
        stub = plan_pb2_grpc.PlanServiceStub(channel)
        created = await create_plan(stub)
        watcher = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            async with db.UnitOfWork(db.session_factory(app.engine)) as uow:
                reader = SqlPlanReader(uow.session)
                taken = await reader.version(created.id, lock=True)
                assert taken is not None and not taken.in_use
                # Version 1 is not in use yet, so alone this update would change it in place.
                update = asyncio.create_task(
                    update_plan(stub, Plan(id=created.id, base_fee=usd(4900)), "base_fee")
                )
                assert await waits_on_lock(watcher, postgres_url), "the update did not wait for the version"
                await reader.mark_in_use(created.id, taken.version)
                await uow.commit()
            updated = await update
        finally:
            await watcher.close()
        assert (updated.version, updated.base_fee.amount_minor) == (2, 4900)
        first = await stub.GetPlan(plan_pb2.GetPlanRequest(id=created.id, version=1))
        assert first.base_fee.amount_minor == 2900

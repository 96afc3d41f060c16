"""The billing catalog (MeterService, PlanService) through a real in-process gRPC server, on each backend."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import select

from app.server import App
from core import db, outbox
from core.audit import AuditEventRow
from tally.billing.v1 import meter_pb2, meter_pb2_grpc
from tests.support import details, failing

Meter = meter_pb2.Meter


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

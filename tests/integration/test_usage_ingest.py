"""Recording usage through a real in-process gRPC server, on each backend: exactly once per event
id, every refusal naming its field, batches answered per event; partitions and races on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
from google.type import decimal_pb2
from sqlalchemy import func, select, text

from app.server import App
from billing_svc.module import BillingServices
from billing_svc.usage import partitions
from billing_svc.usage.domain import NewUsage, UsageInput, UsageRecord
from billing_svc.usage.tables import UsageEventIdRow, UsageRecordRow
from billing_svc.usage.use_cases import record_usage_batch
from core import db
from core.clock import FrozenClock
from core.principal import SYSTEM, Role
from core.settings import Settings
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import (
    meter_pb2,
    meter_pb2_grpc,
    test_clock_pb2,
    test_clock_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.billing_support import new_account
from tests.integration.test_concurrency import waits_on_lock
from tests.integration.test_gateway import Gateway, bearer, call
from tests.integration.test_statement_count import counting
from tests.support import asyncpg_dsn, channel_as, details, failing, mint, serving, unpack

Meter = meter_pb2.Meter
Result = usage_pb2.UsageRecordResult


@pytest.fixture
def usage(channel: grpc.aio.Channel) -> usage_pb2_grpc.UsageServiceStub:
    return usage_pb2_grpc.UsageServiceStub(channel)


async def meter(
    channel: grpc.aio.Channel, code: str, aggregation: Meter.Aggregation.ValueType = Meter.AGGREGATION_SUM
) -> Meter:
    stub = meter_pb2_grpc.MeterServiceStub(channel)
    prop = "user" if aggregation == Meter.AGGREGATION_UNIQUE_COUNT else ""
    return await stub.CreateMeter(
        meter_pb2.CreateMeterRequest(
            meter=Meter(code=code, display_name=code, unit_label="u", aggregation=aggregation, property=prop)
        )
    )


def event(
    account_id: str,
    units: str = "1",
    *,
    service: str = "api_calls",
    event_id: str = "",
    at: datetime | None = None,
    request_id: str = "",
    **fields: Any,
) -> usage_pb2.CreateUsageRecordRequest:
    record = usage_pb2.UsageRecord(
        service=service, units_consumed=decimal_pb2.Decimal(value=units), event_id=event_id, **fields
    )
    if at is not None:
        record.event_time.FromDatetime(at)
    return usage_pb2.CreateUsageRecordRequest(
        account_id=account_id, usage_record=record, request_id=request_id
    )


async def rows(app: App) -> list[UsageRecordRow]:
    async with db.session_factory(db.read_only(app.engine))() as session:
        return list((await session.execute(select(UsageRecordRow).order_by(UsageRecordRow.id))).scalars())


async def event_id_count(app: App) -> int:
    async with db.session_factory(db.read_only(app.engine))() as session:
        return int((await session.execute(select(func.count()).select_from(UsageEventIdRow))).scalar_one())


@pytest.fixture
async def account_id(channel: grpc.aio.Channel) -> str:
    await meter(channel, "api_calls")
    return (await new_account(channel, 1)).id


async def test_create_then_replay_then_reuse(
    app: App, usage: usage_pb2_grpc.UsageServiceStub, account_id: str
) -> None:
    first = await usage.CreateUsageRecord(event(account_id, "2.50", event_id="e-1", properties={"k": "v"}))
    assert not first.replay and not first.event_id_assigned
    record = first.usage_record
    assert record.id.startswith("usg_")
    assert (record.account_id, record.service, record.units_consumed.value) == (
        account_id,
        "api_calls",
        "2.5",
    )
    assert record.meter_id.startswith("mtr_") and record.event_id == "e-1"

    # The same event again (units written differently, same value): the original, as a replay.
    again = await usage.CreateUsageRecord(event(account_id, "2.5000", event_id="e-1", properties={"k": "v"}))
    assert again.replay and again.usage_record == record

    error = await failing(usage.CreateUsageRecord(event(account_id, "3", event_id="e-1")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(error).info.reason == "USAGE_EVENT_ID_REUSED"
    assert record.id in (error.details() or "")
    stored = await rows(app)
    assert [(row.id, str(row.units)) for row in stored] == [(record.id, str(stored[0].units))]
    assert stored[0].units == Decimal("2.5") and await event_id_count(app) == 1


async def test_a_batch_stores_its_numbers_and_times_exactly(
    app: App, usage: usage_pb2_grpc.UsageServiceStub, account_id: str
) -> None:
    # PostgreSQL receives a batch as one JSON document, units and prices as text and event times as
    # microseconds since 1970 (billing_svc/usage/repository.py): the extremes the checks allow come
    # back unchanged.
    at = datetime.now(UTC).replace(microsecond=123457) - timedelta(hours=1)
    sent = {
        "big": ("999999999999999999", "", at),
        "tiny": ("0.000000000001", "12345678.000000000001", at - timedelta(microseconds=1)),
        "negative": ("-2.5", "0", at + timedelta(microseconds=999999)),
        "exponent": ("1.5E+3", "2.5e-3", at - timedelta(hours=2, microseconds=7)),
    }
    # And properties as an object inside that document: quotes, backslashes, non-ASCII text.
    properties = {"région": "東京", "quote": 'a"b\\c', "z": ""}
    requests = [
        event(
            account_id,
            units,
            event_id=key,
            at=when,
            price_per_unit=decimal_pb2.Decimal(value=price),
            properties=properties if key == "big" else {},
        )
        for key, (units, price, when) in sent.items()
    ]
    reply = await usage.BatchCreateUsageRecords(usage_pb2.BatchCreateUsageRecordsRequest(requests=requests))
    assert [result.outcome for result in reply.results] == [Result.OUTCOME_STORED] * len(sent)
    assert reply.results[3].usage_record.units_consumed.value == "1500"
    stored = {row.event_id: row for row in await rows(app)}
    assert set(stored) == set(sent)
    for key, (units, price, when) in sent.items():
        row = stored[key]
        assert row.units == Decimal(units)
        assert row.price_per_unit == (Decimal(price) if price else None)
        assert row.event_time == when
        assert row.properties == (properties if key == "big" else {})
    assert len({row.create_time for row in stored.values()}) == 1  # one batch, one time of receipt


async def test_omitted_event_time_and_ids(
    app: App, usage: usage_pb2_grpc.UsageServiceStub, account_id: str
) -> None:
    # No event time: the time of receipt; a retry still matches (the fingerprint says "none").
    first = await usage.CreateUsageRecord(event(account_id, request_id="rq-1"))
    assert first.usage_record.event_id == "rq-1" and first.usage_record.HasField("event_time")
    again = await usage.CreateUsageRecord(event(account_id, request_id="rq-1"))
    assert again.replay and again.usage_record == first.usage_record
    # Neither id: the server assigns one, and a retry is a new event.
    assigned = await usage.CreateUsageRecord(event(account_id))
    other = await usage.CreateUsageRecord(event(account_id))
    assert assigned.event_id_assigned and other.event_id_assigned
    assert assigned.usage_record.event_id != other.usage_record.event_id
    error = await failing(usage.CreateUsageRecord(event(account_id, event_id="a", request_id="b")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(error).violations) == {"request_id"}
    assert len(await rows(app)) == 3


async def test_refusals_name_the_field(
    app: App, channel: grpc.aio.Channel, usage: usage_pb2_grpc.UsageServiceStub, account_id: str
) -> None:
    await meter(channel, "seats", Meter.AGGREGATION_MAX)
    cases: list[tuple[usage_pb2.CreateUsageRecordRequest, str]] = [
        (event(account_id, "", event_id="x1"), "usage_record.units_consumed"),
        (event(account_id, "1e", event_id="x2"), "usage_record.units_consumed"),
        (event(account_id, "NaN", event_id="x3"), "usage_record.units_consumed"),
        (event(account_id, "0.0000000000001", event_id="x4"), "usage_record.units_consumed"),
        (event(account_id, "1 000", event_id="x5"), "usage_record.units_consumed"),
        (event(account_id, "-1", service="seats", event_id="x6"), "usage_record.units_consumed"),
        (event(account_id, service="nope", event_id="x7"), "usage_record.service"),
        (event(account_id, service="", event_id="x8"), "usage_record.service"),
        (event("", event_id="x9"), "account_id"),
        (event(account_id, event_id="x\n"), "usage_record.event_id"),
        (event(account_id, event_id="x" * 129), "usage_record.event_id"),
        (
            event(account_id, event_id="x10", price_per_unit=decimal_pb2.Decimal(value="-1")),
            "usage_record.price_per_unit",
        ),
        (
            event(account_id, event_id="x11", properties={str(n): "v" for n in range(33)}),
            "usage_record.properties",
        ),
        (event(account_id, event_id="x12", properties={"k" * 65: "v"}), "usage_record.properties"),
    ]
    for request, path in cases:
        error = await failing(usage.CreateUsageRecord(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert path in details(error).violations, (request, details(error).violations)
    unknown = await failing(usage.CreateUsageRecord(event(account_id, service="nope")))
    assert "api_calls" in details(unknown).violations["usage_record.service"]
    assert "seats" in details(unknown).violations["usage_record.service"]
    # Negative units are corrections a SUM meter takes.
    assert (
        await usage.CreateUsageRecord(event(account_id, "-1.5"))
    ).usage_record.units_consumed.value == "-1.5"
    assert len(await rows(app)) == 1


async def test_unknown_and_deleted_accounts_store_nothing(
    app: App, channel: grpc.aio.Channel, usage: usage_pb2_grpc.UsageServiceStub, account_id: str
) -> None:
    deleted = await new_account(channel, 2)
    await account_pb2_grpc.AccountServiceStub(channel).DeleteAccount(
        account_pb2.DeleteAccountRequest(id=deleted.id)
    )
    for unknown in ("acct_doesnotexist", deleted.id, "acct_" + "x" * 60):
        error = await failing(usage.CreateUsageRecord(event(unknown)))
        assert error.code() == grpc.StatusCode.NOT_FOUND, unknown
        assert details(error).info.reason == "ACCOUNT_NOT_FOUND"
    assert await rows(app) == [] and await event_id_count(app) == 0


async def test_customers_and_unscoped_services_may_not_record(app: App, account_id: str) -> None:
    tokens = {
        "customer": mint(app, Role.CUSTOMER, account_id=account_id),
        "unscoped": mint(app, Role.SERVICE, scopes=frozenset({"usage:read"})),
    }
    for name, token in tokens.items():
        async with channel_as(app, token) as channel:
            stub = usage_pb2_grpc.UsageServiceStub(channel)
            error = await failing(stub.CreateUsageRecord(event(account_id)))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, name
            batch = await failing(
                stub.BatchCreateUsageRecords(
                    usage_pb2.BatchCreateUsageRecordsRequest(requests=[event(account_id)])
                )
            )
            assert batch.code() == grpc.StatusCode.PERMISSION_DENIED, name
    async with channel_as(app, mint(app, Role.SERVICE, scopes=frozenset({"usage:write"}))) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        assert not (await stub.CreateUsageRecord(event(account_id, event_id="svc"))).replay
    assert len(await rows(app)) == 1


async def test_batch_answers_each_event(
    app: App, usage: usage_pb2_grpc.UsageServiceStub, account_id: str
) -> None:
    earlier = await usage.CreateUsageRecord(event(account_id, "5", event_id="old"))
    requests = [
        event(account_id, "1", event_id="b-new"),  # 0 stored
        event(account_id, "5", event_id="old"),  # 1 replay of the earlier call
        event(account_id, "9", event_id="old"),  # 2 reused id
        event(account_id, "2", event_id="b-twice"),  # 3 stored
        event(account_id, "2.0", event_id="b-twice"),  # 4 replay of 3
        event(account_id, "3", event_id="b-twice"),  # 5 reused id of 3
        event(account_id, "x", event_id="b-bad"),  # 6 bad units
        event(account_id, service="nope", event_id="b-svc"),  # 7 unknown service
        event("acct_nobody", event_id="b-acct"),  # 8 unknown account
        event(account_id, "4", event_id="b-last"),  # 9 stored
    ]
    response = await usage.BatchCreateUsageRecords(
        usage_pb2.BatchCreateUsageRecordsRequest(requests=requests)
    )
    outcomes = [result.outcome for result in response.results]
    S, R, F = Result.OUTCOME_STORED, Result.OUTCOME_REPLAY, Result.OUTCOME_FAILED
    assert outcomes == [S, R, F, S, R, F, F, F, F, S]
    assert [result.index for result in response.results] == list(range(10))
    assert (response.stored_count, response.replay_count, response.failed_count) == (3, 2, 5)
    results = response.results
    assert results[1].usage_record == earlier.usage_record
    assert results[4].usage_record == results[3].usage_record
    assert results[2].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert earlier.usage_record.id in results[2].error.message
    assert results[3].usage_record.id in results[5].error.message
    assert "usage_record.units_consumed" in unpack(results[6].error).violations
    assert "usage_record.service" in unpack(results[7].error).violations
    assert results[8].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert not results[6].HasField("usage_record")
    stored = {row.event_id for row in await rows(app)}
    assert stored == {"old", "b-new", "b-twice", "b-last"}
    exposition = app.metrics.render().decode()
    for outcome, count in (("stored", 4), ("replay", 2), ("failed", 5)):
        assert f'tally_usage_events_total{{outcome="{outcome}"}} {count}.0' in exposition


async def test_batch_size_is_checked(usage: usage_pb2_grpc.UsageServiceStub, account_id: str) -> None:
    for count in (0, 1001):
        request = usage_pb2.BatchCreateUsageRecordsRequest(requests=[event(account_id)] * count)
        error = await failing(usage.BatchCreateUsageRecords(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(details(error).violations) == {"requests"}


@pytest.fixture
async def frozen(settings: Settings) -> AsyncIterator[tuple[App, FrozenClock]]:
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    async with serving(settings, clock) as app:
        yield app, clock


async def test_event_time_window_bounds(frozen: tuple[App, FrozenClock]) -> None:
    app, clock = frozen
    now = clock.now()
    async with channel_as(app, mint(app)) as channel:
        await meter(channel, "api_calls")
        account = (await new_account(channel, 1)).id
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        late, skew = timedelta(hours=72), timedelta(seconds=300)
        for at in (now - late, now + skew):
            assert not (await usage.CreateUsageRecord(event(account, at=at, event_id=at.isoformat()))).replay
        for at, words in (
            (now - late - timedelta(seconds=1), "72 hours"),
            (now + skew + timedelta(seconds=1), "300 seconds"),
        ):
            error = await failing(usage.CreateUsageRecord(event(account, at=at, event_id="out")))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in details(error).violations["usage_record.event_time"]
    assert len(await rows(app)) == 2


async def test_rest_idempotency_key_is_the_event_id(app: App, account_id: str) -> None:
    headers = {**bearer(mint(app)), "Idempotency-Key": "rest-key-1"}
    body = {"service": "api_calls", "unitsConsumed": {"value": "7"}}
    path = f"/v1/accounts/{account_id}/usageRecords"
    async with Gateway(app) as http:
        first, _ = await call(http, "POST", path, 200, json=body, headers=headers)
        assert first["usageRecord"]["eventId"] == "rest-key-1"
        assert not first.get("replay", False) and not first.get("eventIdAssigned", False)
        again, _ = await call(http, "POST", path, 200, json=body, headers=headers)
    assert again["replay"] is True
    assert again["usageRecord"] == first["usageRecord"]
    assert len(await rows(app)) == 1


# --- PostgreSQL: races and partitions ------------------------------------------------------------


@pytest.mark.postgres
async def test_concurrent_duplicates_store_one_row(pg_app: App) -> None:
    async with channel_as(pg_app, mint(pg_app)) as channel:
        await meter(channel, "api_calls")
        account = (await new_account(channel, 1)).id
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        request = event(account, "1.25", event_id="same", at=datetime.now(UTC) - timedelta(minutes=1))
        replies = await asyncio.gather(*(usage.CreateUsageRecord(request) for _ in range(50)))
    assert len({reply.usage_record.SerializeToString() for reply in replies}) == 1
    assert sorted(reply.replay for reply in replies) == [False] + [True] * 49
    assert len(await rows(pg_app)) == 1 and await event_id_count(pg_app) == 1


@pytest.mark.postgres
async def test_rows_land_in_their_monthly_partition(pg_app: App) -> None:
    now = datetime.now(UTC)
    async with channel_as(pg_app, mint(pg_app)) as channel:
        await meter(channel, "api_calls")
        account = (await new_account(channel, 1)).id
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        # 71 hours back may lie in last month: two events, possibly two partitions, one id.
        early = now - timedelta(hours=71)
        first = await usage.CreateUsageRecord(event(account, at=early, event_id="p-1"))
        other_time = await failing(usage.CreateUsageRecord(event(account, at=now, event_id="p-1")))
        assert other_time.code() == grpc.StatusCode.ALREADY_EXISTS
        await usage.CreateUsageRecord(event(account, at=now, event_id="p-2"))
    async with pg_app.engine.connect() as connection:
        placed: dict[str, str] = dict(
            (
                await connection.execute(text("SELECT event_id, tableoid::regclass::text FROM usage_records"))
            ).all()
        )
        assert placed == {
            "p-1": partitions.partition_name(partitions.month_start(early)),
            "p-2": partitions.partition_name(partitions.month_start(now)),
        }
        assert first.usage_record.event_id == "p-1"
        # Idempotent: everything exists already, and asking again changes nothing.
        assert await partitions.ensure_partitions(connection, now) == []
        made = await partitions.ensure_partitions(connection, now, months_ahead=5)
        assert made == [partitions.partition_name(partitions.month_start(now, n)) for n in (4, 5)]
        assert await partitions.ensure_partitions(connection, now, months_ahead=5) == []
        # Archiving: months that end by the cutoff leave the table, rows and all; later ones stay.
        detached = await partitions.detach_partitions_before(connection, partitions.month_start(now, -1))
        assert detached == [partitions.partition_name(partitions.month_start(now, n)) for n in (-3, -2)]
        left = (await connection.execute(text("SELECT count(*) FROM usage_records"))).scalar_one()
        assert left == 2  # both events are in this month or the last, which stay attached
        await connection.rollback()


async def _create(
    app: App, request: usage_pb2.CreateUsageRecordRequest
) -> usage_pb2.CreateUsageRecordResponse:
    # A token minted now: the frozen clock moved past the last one's expiry.
    async with channel_as(app, mint(app)) as channel:
        return await usage_pb2_grpc.UsageServiceStub(channel).CreateUsageRecord(request)


async def test_upkeep_purges_event_ids_past_retention(frozen: tuple[App, FrozenClock]) -> None:
    app, clock = frozen
    upkeep = app.usage_upkeep
    assert upkeep is not None
    await upkeep.wait_for_passes(1)  # the pass at start
    async with channel_as(app, mint(app)) as channel:
        await meter(channel, "api_calls")
        account = (await new_account(channel, 1)).id
    await _create(app, event(account, event_id="kept-35-days"))
    clock.advance(timedelta(days=35) - timedelta(seconds=1))
    made_first, purged_first = await upkeep.run_once()
    assert purged_first == 0
    assert (await _create(app, event(account, event_id="kept-35-days"))).replay
    clock.advance(timedelta(seconds=2))
    made, purged = await upkeep.run_once()
    assert purged == 1
    assert await event_id_count(app) == 0
    # Past retention the id is free again: the same event is a new one.
    assert not (await _create(app, event(account, event_id="kept-35-days"))).replay
    assert len(await rows(app)) == 2
    if app.engine.dialect.name == "postgresql":
        # A month later, the partitions three months ahead of the new month were made.
        assert partitions.partition_name(partitions.month_start(clock.now(), 3)) in made_first + made
    else:
        assert made_first == made == []


@pytest.mark.postgres
@pytest.mark.parametrize("first_commits", [True, False])
async def test_a_duplicate_waits_for_the_transaction_holding_its_id(
    pg_app: App, postgres_url: str, first_commits: bool
) -> None:
    async with channel_as(pg_app, mint(pg_app)) as channel:
        api = await meter(channel, "api_calls")
        account = (await new_account(channel, 1)).id
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        billing = pg_app.components.services["billing"]
        assert isinstance(billing, BillingServices)
        now = datetime.now(UTC)
        held = UsageRecord(
            id="usg_heldbyanothertransaction", account_id=account, meter_id=api.id, service="api_calls",
            units=Decimal(99), price_per_unit=None, event_time=now, properties={}, event_id="race",
            create_time=now,
        )  # fmt: skip
        watcher = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            async with billing.usage.new_uow() as uow:
                assert await uow.usage.insert_new([NewUsage(held, "f" * 64)]) == [None]
                racing = asyncio.ensure_future(usage.CreateUsageRecord(event(account, "1", event_id="race")))
                assert await waits_on_lock(watcher, postgres_url)
                assert not racing.done()
                if first_commits:
                    await uow.commit()
        finally:
            await watcher.close()
        if first_commits:
            error = await failing(racing)
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS
            assert held.id in (error.details() or "")
            assert [row.id for row in await rows(pg_app)] == [held.id]
        else:
            reply = await racing
            assert not reply.replay
            assert [row.id for row in await rows(pg_app)] == [reply.usage_record.id]


async def test_a_batch_costs_the_same_statements_for_10_events_as_for_1000(app: App, account_id: str) -> None:
    billing = app.components.services["billing"]
    assert isinstance(billing, BillingServices)

    def batch(size: int, tag: str) -> list[UsageInput]:
        return [UsageInput(account_id, "api_calls", str(n), event_id=f"{tag}-{n}") for n in range(size)]

    counts: list[tuple[int, int]] = []  # (statements, commits) per batch
    for size, tag in ((10, "small"), (1000, "full"), (1000, "full")):  # the last: every event a replay
        with counting(app.engine) as seen:
            results = await record_usage_batch(billing.usage, SYSTEM, batch(size, tag))
        counts.append((len(seen.sql), seen.commits))
        assert len(results) == size
    small, full, replayed = counts
    assert small == full, counts  # set-based: the batch's size does not add statements
    assert full[1] == replayed[1] == 1  # one commit each
    assert replayed[0] <= full[0] + 1, counts  # the originals: one more select at most
    assert len(await rows(app)) == 1010


async def test_an_account_on_a_test_clock_records_usage_at_the_clocks_time(
    app: App, channel: grpc.aio.Channel, usage: usage_pb2_grpc.UsageServiceStub, account_id: str
) -> None:
    frozen = datetime(2027, 3, 1, 12, tzinfo=UTC)  # months after the wall clock
    clocks = test_clock_pb2_grpc.TestClockServiceStub(channel)
    test_clock = test_clock_pb2.TestClock()
    test_clock.frozen_time.FromDatetime(frozen)
    clock = await clocks.CreateTestClock(test_clock_pb2.CreateTestClockRequest(test_clock=test_clock))
    await clocks.AttachAccount(test_clock_pb2.AttachAccountRequest(id=clock.id, account_id=account_id))
    stamped = await usage.CreateUsageRecord(event(account_id, event_id="no-time"))
    assert stamped.usage_record.event_time.ToDatetime(tzinfo=UTC) == frozen
    earlier = await usage.CreateUsageRecord(
        event(account_id, event_id="an-hour-ago", at=frozen - timedelta(hours=1))
    )
    assert not earlier.replay
    # The wall clock's now is months before the clock's: far outside its late window.
    error = await failing(usage.CreateUsageRecord(event(account_id, event_id="wall", at=datetime.now(UTC))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "usage_record.event_time" in details(error).violations
    assert sorted(row.event_time for row in await rows(app)) == [frozen - timedelta(hours=1), frozen]

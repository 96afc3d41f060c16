"""A usage stream whose server is killed with SIGKILL mid-way: the producer reconnects to a new
server on the same PostgreSQL and sends again everything after the last acknowledgement, and every
event is stored exactly once (counted in the database).

What is checked, in order: after the kill, every event up to the last acknowledged sequence number
is in usage_records (an acknowledgement means durable); after the resend, the table holds each of
the N events once, with N distinct event ids; events the dead server had committed but not yet
acknowledged came back as replays, not as second rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest

from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import meter_pb2, meter_pb2_grpc, usage_pb2, usage_pb2_grpc
from tests.e2e.harness import admin_metadata, launched_server, migrated_postgres_database, server_env
from tests.support import asyncpg_dsn

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

EVENTS = 20_000
KILL_AFTER_ACKNOWLEDGED = 3_000
PRODUCER = "crash-test-producer"
PER_MESSAGE = 50


@pytest.fixture
async def migrated_postgres(tmp_path: Path) -> AsyncIterator[str]:
    async with migrated_postgres_database("tally_e2e_usage_crash", tmp_path) as url:
        yield url


def event(account_id: str, sequence: int) -> usage_pb2.SequencedUsageRecord:
    record = usage_pb2.SequencedUsageRecord(sequence=sequence)
    record.request.account_id = account_id
    record.request.usage_record.service = "api_calls"
    record.request.usage_record.units_consumed.value = "1"
    return record


async def set_up(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        await meter_pb2_grpc.MeterServiceStub(channel).CreateMeter(
            meter_pb2.CreateMeterRequest(
                meter=meter_pb2.Meter(
                    code="api_calls", display_name="API calls", aggregation=meter_pb2.Meter.AGGREGATION_SUM
                )
            ),
            metadata=admin_metadata(),
            timeout=10,
        )
        account = await account_pb2_grpc.AccountServiceStub(channel).CreateAccount(
            account_pb2.CreateAccountRequest(
                account=account_pb2.Account(
                    display_name="Crash", email="crash@example.com", currency_code="USD"
                )
            ),
            metadata=admin_metadata(),
            timeout=10,
        )
    return str(account.id)


@dataclass
class Streamed:
    acknowledged: int
    stored: int = 0
    replays: int = 0
    broke_with: grpc.StatusCode | None = None


async def stream(
    address: str, account_id: str, first: int, on_ack: Callable[[int], Awaitable[None]] | None = None
) -> Streamed:
    """Send events first..EVENTS on one stream and read its acknowledgements until it ends or breaks;
    `on_ack` is awaited with each acknowledged sequence number."""
    result = Streamed(acknowledged=first - 1)

    async def requests() -> AsyncIterator[usage_pb2.StreamUsageRecordsRequest]:
        for start in range(first, EVENTS + 1, PER_MESSAGE):
            message = usage_pb2.StreamUsageRecordsRequest(
                records=[event(account_id, n) for n in range(start, min(start + PER_MESSAGE, EVENTS + 1))]
            )
            if start == first:
                message.producer_id = PRODUCER  # every stream, a resumed one too, names its producer
            yield message

    async with grpc.aio.insecure_channel(address) as channel:
        call = usage_pb2_grpc.UsageServiceStub(channel).StreamUsageRecords(
            requests(), metadata=admin_metadata(), timeout=120
        )
        try:
            async for ack in call:
                assert not ack.failures, ack.failures
                result.acknowledged = ack.acknowledged_sequence
                result.stored += ack.stored_count
                result.replays += ack.replay_count
                if on_ack is not None:
                    await on_ack(ack.acknowledged_sequence)
        except grpc.aio.AioRpcError as exc:
            result.broke_with = exc.code()
    return result


async def counts(url: str, account_id: str) -> tuple[int, int, list[str]]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_ids FROM usage_records"
            " WHERE account_id = $1",
            account_id,
        )
        ids = [
            r["event_id"]
            for r in await connection.fetch(
                "SELECT event_id FROM usage_records WHERE account_id = $1", account_id
            )
        ]
    finally:
        await connection.close()
    return int(row["n"]), int(row["distinct_ids"]), ids


async def test_a_stream_resumed_after_the_server_was_killed_stores_every_event_once(
    tmp_path: Path, migrated_postgres: str
) -> None:
    env = server_env(tmp_path, TALLY_DATABASE_URL=migrated_postgres)
    with launched_server(env, tmp_path) as first_server:
        address = await asyncio.to_thread(first_server.wait_for_marker)
        account_id = await set_up(address)
        killed = False

        async def kill_mid_stream(acknowledged: int) -> None:
            nonlocal killed
            if acknowledged >= KILL_AFTER_ACKNOWLEDGED and not killed:
                killed = True  # with events after it in flight, queued, or committed unacknowledged
                await asyncio.to_thread(first_server.kill)

        broken = await stream(address, account_id, 1, on_ack=kill_mid_stream)
    assert killed
    # The stream broke. A kill while the client is writing is INTERNAL in grpc.aio ("Internal error
    # from Core", the failed write), while it is reading UNAVAILABLE: either way the producer resumes.
    assert broken.broke_with in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), broken
    assert KILL_AFTER_ACKNOWLEDGED <= broken.acknowledged < EVENTS
    rows_before_resume, _, ids = await counts(migrated_postgres, account_id)
    durable = {f"{PRODUCER}:{sequence}" for sequence in range(1, broken.acknowledged + 1)}
    assert durable <= set(ids), "an acknowledged event is missing after the kill"

    with launched_server(env, tmp_path) as second_server:
        address = await asyncio.to_thread(second_server.wait_for_marker)
        resumed = await stream(address, account_id, broken.acknowledged + 1)
    assert resumed.broke_with is None
    assert resumed.acknowledged == EVENTS
    rows, distinct_ids, ids = await counts(migrated_postgres, account_id)
    assert rows == EVENTS
    assert distinct_ids == EVENTS
    assert set(ids) == {f"{PRODUCER}:{sequence}" for sequence in range(1, EVENTS + 1)}
    # Each event stored once: by the first server (acknowledged or not) or by the second. What the
    # first had committed without acknowledging came back to the second as replays.
    assert broken.stored == broken.acknowledged
    assert resumed.replays == rows_before_resume - broken.acknowledged
    assert resumed.stored == EVENTS - rows_before_resume

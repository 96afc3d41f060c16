"""The client's usage methods against a real `tally serve`: record_usage, record_usage_batch and the
streaming producer, through a server killed and restarted mid-way, replies held past the deadline,
and a rate-limited caller; the rows in usage_records are counted afterwards.

These need the UsageService served (the usage branches); until then every call is UNIMPLEMENTED.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from tally.account.v1 import account_pb2
from tally.billing.v1 import meter_pb2, meter_pb2_grpc
from tally_client import (
    AsyncClient,
    BatchResult,
    Client,
    InvalidArgument,
    RetryPolicy,
    UsageEvent,
)
from tests.client.live import BOUND_SECONDS, HoldingProxy, TallyProcess, retry_log, tally_process
from tests.e2e.harness import admin_token

pytestmark = pytest.mark.e2e

SERVICE = "api_calls"
PATIENT = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.5, jitter=0.2, total_budget=60.0)


def create_meter(target: str) -> None:
    channel = grpc.insecure_channel(target)
    try:
        meter_pb2_grpc.MeterServiceStub(channel).CreateMeter(
            meter_pb2.CreateMeterRequest(
                meter=meter_pb2.Meter(
                    code=SERVICE, display_name="API calls", aggregation=meter_pb2.Meter.AGGREGATION_SUM
                )
            ),
            metadata=(("authorization", f"Bearer {admin_token()}"),),
            timeout=BOUND_SECONDS,
        )
    finally:
        channel.close()


def prepared(process: TallyProcess) -> str:
    """A meter and an account on `process`; the account's id."""
    create_meter(process.target)
    with Client(process.target, token=admin_token()) as client:
        account = client.create_account(
            account_pb2.Account(display_name="Usage Ltd", email="usage@example.com", currency_code="EUR")
        )
    return account.id


@pytest.fixture
def tally(tmp_path: Path) -> Iterator[TallyProcess]:
    with tally_process(tmp_path) as process:
        yield process


@pytest.fixture
def account_id(tally: TallyProcess) -> str:
    return prepared(tally)


def usage_rows(tally: TallyProcess, account_id: str) -> list[tuple[str, str]]:
    """(event_id, units) of every stored record of the account."""
    rows = tally.rows("SELECT event_id, units FROM usage_records WHERE account_id = ?", account_id)
    return [(str(event_id), str(units)) for event_id, units in rows]


def event_ids(tally: TallyProcess, account_id: str) -> list[str]:
    return sorted(event_id for event_id, _ in usage_rows(tally, account_id))


def test_record_usage_stores_once_and_replays_the_same_event_id(tally, account_id):
    with Client(tally.target, token=admin_token()) as client:
        first = client.record_usage(account_id, SERVICE, "2.5", event_id="evt-1", properties={"region": "eu"})
        again = client.record_usage(account_id, SERVICE, "2.5", event_id="evt-1", properties={"region": "eu"})
        generated = client.record_usage(account_id, SERVICE, Decimal("0.125"))
    assert (first.replay, again.replay) == (False, True)
    assert again.record.id == first.record.id
    assert Decimal(first.record.units_consumed.value) == Decimal("2.5")
    assert generated.record.event_id.startswith("evt_")
    assert generated.event_id_assigned is False  # the client made the id, once, before the first attempt
    assert event_ids(tally, account_id) == sorted(["evt-1", generated.record.event_id])


def test_an_unknown_service_names_the_field(tally, account_id):
    with Client(tally.target, token=admin_token()) as client, pytest.raises(InvalidArgument) as bad:
        client.record_usage(account_id, "no_such_meter", 1)
    assert "usage_record.service" in {v.field for v in bad.value.field_violations}
    assert usage_rows(tally, account_id) == []


def test_a_batch_reports_each_events_outcome(tally, account_id):
    events = [
        UsageEvent(account_id, SERVICE, 1, event_id="b-0"),
        UsageEvent(account_id, "no_such_meter", 1, event_id="b-1"),
        UsageEvent(account_id, SERVICE, "3", event_id="b-2"),
    ]
    with Client(tally.target, token=admin_token()) as client:
        result = client.record_usage_batch(events)
        replayed = client.record_usage_batch([events[0]])
    assert (result.stored_count, result.replay_count, result.failed_count) == (2, 0, 1)
    (failure,) = result.failures
    assert failure.index == 1
    assert isinstance(failure.error, InvalidArgument)
    assert replayed.items[0].result is not None
    assert replayed.items[0].result.replay
    assert event_ids(tally, account_id) == ["b-0", "b-2"]


def test_batches_across_a_kill_and_restart_are_stored_once(tally, account_id):
    """Batch 3 is committed and its reply lost with the server; resent to the restarted server
    (same event ids), it is all replays. Every event is stored exactly once."""
    batches = [
        [UsageEvent(account_id, SERVICE, 1, event_id=f"k{b}-{i}") for i in range(50)] for b in range(5)
    ]
    proxy = HoldingProxy(tally.port)
    results: list[BatchResult] = []
    failure: list[BaseException] = []
    try:
        with (
            retry_log() as (log, logger),
            Client(proxy.target, token=admin_token(), retry=PATIENT, logger=logger) as client,
        ):
            held, go_on = threading.Event(), threading.Event()

            def run() -> None:
                try:
                    for number, batch in enumerate(batches):
                        if number == 3:
                            held.set()
                            go_on.wait(BOUND_SECONDS)
                        results.append(client.record_usage_batch(batch))
                except BaseException as exc:
                    failure.append(exc)
                    held.set()

            worker = threading.Thread(target=run)
            worker.start()
            assert held.wait(BOUND_SECONDS)
            assert failure == []
            proxy.hold()
            go_on.set()
            tally.wait_for_row("SELECT 1 FROM usage_records WHERE event_id = ?", "k3-49")
            tally.kill()
            proxy.release()
            tally.start()
            worker.join(BOUND_SECONDS * 2)
            assert not worker.is_alive()
    finally:
        proxy.close()
    assert failure == []
    assert "UNAVAILABLE" in log.codes()
    assert [r.failed_count for r in results] == [0] * 5
    assert results[3].replay_count == 50
    assert event_ids(tally, account_id) == sorted(
        event.event_id or "" for batch in batches for event in batch
    )


def test_a_record_past_the_deadline_is_retried_with_its_event_id(tally, account_id):
    proxy = HoldingProxy(tally.port)
    try:

        def release_once_stored(record: object) -> None:
            tally.wait_for_row("SELECT 1 FROM usage_records WHERE event_id = ?", "slow-1")
            proxy.release()

        with retry_log(release_once_stored) as (log, logger):
            client = Client(proxy.target, token=admin_token(), logger=logger, default_timeout=0.5)
            try:
                client.record_usage(account_id, SERVICE, 1, event_id="warm")
                proxy.hold()
                result = client.record_usage(account_id, SERVICE, 7, event_id="slow-1")
            finally:
                client.close()
    finally:
        proxy.close()
    assert log.codes() == ["DEADLINE_EXCEEDED"]
    assert result.replay
    assert sorted(usage_rows(tally, account_id)) == [("slow-1", "7"), ("warm", "1")]


def test_a_stream_resends_what_a_killed_server_left_unacknowledged(tally, account_id):
    """Events 11-20 are stored, then the server dies before acknowledging them; the producer
    resends them (same sequence, so the same `<producer_id>:<sequence>` ids) to the restarted
    server, then sends 21-30. Every event is stored exactly once."""
    proxy = HoldingProxy(tally.port)
    try:
        with (
            retry_log() as (log, logger),
            Client(proxy.target, token=admin_token(), retry=PATIENT, logger=logger) as client,
        ):
            stream = client.usage_stream(producer_id="client-test", window=100)
            for _ in range(10):
                stream.send(UsageEvent(account_id, SERVICE, 1))
            stream.flush(BOUND_SECONDS)
            assert stream.acknowledged_sequence == 10
            proxy.hold()
            for _ in range(10):
                stream.send(UsageEvent(account_id, SERVICE, 1))
            tally.wait_for_row("SELECT 1 FROM usage_records WHERE event_id = ?", "client-test:20")
            tally.kill()
            proxy.release()
            tally.start()
            for _ in range(10):
                stream.send(UsageEvent(account_id, SERVICE, 1))
            stream.close()
    finally:
        proxy.close()
    assert stream.failures == []
    assert stream.acknowledged_sequence == 30
    assert log.codes()
    assert event_ids(tally, account_id) == sorted(f"client-test:{n}" for n in range(1, 31))


def test_a_rate_limited_producer_waits_the_servers_delay(tmp_path):
    limits = '{"default": {"rate": 4, "burst": 1}, "auth": {"rate": 100, "burst": 100}}'
    with tally_process(tmp_path, TALLY_RATE_LIMITS=limits) as tally:
        account_id = prepared(tally)
        with retry_log() as (log, logger), Client(tally.target, token=admin_token(), logger=logger) as client:
            results = [client.record_usage(account_id, SERVICE, 1, event_id=f"rl-{i}") for i in range(4)]
        assert [result.replay for result in results] == [False] * 4
        assert log.codes() and set(log.codes()) == {"RESOURCE_EXHAUSTED"}
        delays = [float(getattr(record, "tally_delay", -1)) for record in log.records]
        assert all(0 < delay <= 0.25 + 1e-6 for delay in delays), delays
        assert event_ids(tally, account_id) == [f"rl-{i}" for i in range(4)]


async def test_the_async_client_records_batches_and_streams(tally, account_id):
    async with AsyncClient(tally.target, token=admin_token()) as client:
        one = await client.record_usage(account_id, SERVICE, 2, event_id="a-1")
        batch = await client.record_usage_batch([UsageEvent(account_id, SERVICE, 1, event_id="a-2")])
        stream = client.usage_stream(producer_id="async-test")
        for _ in range(5):
            await stream.send(UsageEvent(account_id, SERVICE, 1))
        await stream.close()
    assert not one.replay
    assert batch.stored_count == 1
    assert stream.acknowledged_sequence == 5
    assert event_ids(tally, account_id) == sorted(["a-1", "a-2", *(f"async-test:{n}" for n in range(1, 6))])

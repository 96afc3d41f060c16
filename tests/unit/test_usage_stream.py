"""billing_svc.usage.stream: batching, acknowledgements, event ids, the bound on unacknowledged events.

The batch recorder here is a stand-in that stores in a dict with the same dedup rule as the real
one (first write of an (account, event id) wins, a resend is a replay); the real one is tested
end to end in tests/integration/test_usage_stream.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing_svc.usage.domain import Outcome, RecordResult, UsageInput, UsageRecord
from billing_svc.usage.stream import UsageStream
from core.errors import InvalidArgument
from tally.billing.v1 import usage_pb2

NOW = datetime(2027, 1, 15, 12, tzinfo=UTC)


class Store:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], UsageInput] = {}
        self.batches: list[int] = []
        self.gate: asyncio.Event | None = None  # when set, each batch waits for it
        self.entered = asyncio.Event()  # a batch is being recorded

    async def record(self, items: Sequence[UsageInput]) -> list[RecordResult]:
        self.batches.append(len(items))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        results = []
        for item in items:
            key = (item.account_id, item.event_id or item.request_id)
            outcome = Outcome.REPLAY if key in self.rows else Outcome.STORED
            self.rows.setdefault(key, item)
            record = UsageRecord(
                id=f"usg_{len(self.rows)}",
                account_id=item.account_id,
                meter_id="mtr_1",
                service=item.service,
                units=Decimal(item.units),
                price_per_unit=None,
                event_time=NOW,
                properties={},
                event_id=key[1],
                create_time=NOW,
            )
            results.append(RecordResult(outcome, record))
        return results


def record(sequence: int, event_id: str = "") -> usage_pb2.SequencedUsageRecord:
    event = usage_pb2.SequencedUsageRecord(sequence=sequence)
    event.request.account_id = "acct_1"
    event.request.usage_record.service = "api_calls"
    event.request.usage_record.units_consumed.value = "1"
    event.request.usage_record.event_id = event_id
    return event


def request(sequence: int, event_id: str = "", producer_id: str = "") -> usage_pb2.StreamUsageRecordsRequest:
    """A message carrying one event."""
    return usage_pb2.StreamUsageRecordsRequest(producer_id=producer_id, records=[record(sequence, event_id)])


def carrying(
    sequences: range, producer_id: str = "", event_ids: bool = False
) -> usage_pb2.StreamUsageRecordsRequest:
    """A message carrying one event for each sequence number."""
    return usage_pb2.StreamUsageRecordsRequest(
        producer_id=producer_id, records=[record(n, f"e{n}" if event_ids else "") for n in sequences]
    )


async def feed(
    messages: Sequence[usage_pb2.StreamUsageRecordsRequest],
) -> AsyncIterator[usage_pb2.StreamUsageRecordsRequest]:
    for message in messages:
        yield message


async def collect(
    stream: UsageStream, messages: Sequence[usage_pb2.StreamUsageRecordsRequest]
) -> list[usage_pb2.StreamUsageRecordsResponse]:
    return [response async for response in stream.run(feed(messages))]


async def test_every_event_is_acknowledged_once_and_the_last_ack_is_the_last_sequence() -> None:
    store = Store()
    messages = [request(n, producer_id="p1" if n == 1 else "") for n in range(1, 1201)]
    acks = await collect(
        UsageStream(store.record, max_batch=500, max_message=10, max_unacknowledged=2000), messages
    )
    assert acks[-1].acknowledged_sequence == 1200
    assert sum(ack.stored_count for ack in acks) == 1200
    assert [ack.acknowledged_sequence for ack in acks] == sorted({ack.acknowledged_sequence for ack in acks})
    assert max(store.batches) <= 500
    assert len(store.rows) == 1200


async def test_events_without_ids_get_the_producer_id_and_sequence_so_a_resend_is_a_replay() -> None:
    store = Store()
    first = [request(n, producer_id="meter-7" if n == 1 else "") for n in range(1, 11)]
    await collect(UsageStream(store.record), first)
    assert ("acct_1", "meter-7:4") in store.rows
    # The producer lost its stream after the ack of 6 and sends 7.. again, then new ones.
    resent = [request(n, producer_id="meter-7" if n == 7 else "") for n in range(7, 16)]
    acks = await collect(UsageStream(store.record), resent)
    assert sum(ack.replay_count for ack in acks) == 4
    assert sum(ack.stored_count for ack in acks) == 5
    assert len(store.rows) == 15


async def test_without_a_producer_id_an_event_without_an_id_is_refused_and_the_rest_stored() -> None:
    store = Store()
    acks = await collect(UsageStream(store.record), [request(1, "e1"), request(2), request(3, "e3")])
    failures = [failure for ack in acks for failure in ack.failures]
    assert [failure.index for failure in failures] == [2]
    assert failures[0].outcome == usage_pb2.UsageRecordResult.OUTCOME_FAILED
    assert failures[0].error.code == 3  # INVALID_ARGUMENT
    assert acks[-1].acknowledged_sequence == 3
    assert set(store.rows) == {("acct_1", "e1"), ("acct_1", "e3")}


async def test_a_sequence_that_does_not_increase_ends_the_stream_after_acknowledging_what_came_before() -> (
    None
):
    store = Store()
    stream = UsageStream(store.record)
    acks: list[usage_pb2.StreamUsageRecordsResponse] = []
    with pytest.raises(InvalidArgument) as raised:
        async for ack in stream.run(
            feed([request(1, "a"), request(2, "b"), request(2, "c"), request(3, "d")])
        ):
            acks.append(ack)
    assert raised.value.violations[0].field == "records[0].sequence"
    assert acks[-1].acknowledged_sequence == 2
    assert set(store.rows) == {("acct_1", "a"), ("acct_1", "b")}


async def test_a_bad_producer_id_ends_the_stream_before_anything_is_stored() -> None:
    store = Store()
    with pytest.raises(InvalidArgument) as raised:
        await collect(UsageStream(store.record), [request(1, "a", producer_id="\n")])
    assert raised.value.violations[0].field == "producer_id"
    assert store.rows == {}


async def test_the_server_stops_reading_once_the_unacknowledged_bound_is_reached() -> None:
    store = Store()
    store.gate = asyncio.Event()  # the first batch cannot commit until the test says so
    read = 0

    async def producer() -> AsyncIterator[usage_pb2.StreamUsageRecordsRequest]:
        nonlocal read
        for start in range(1, 1001, 5):
            read += 5
            yield carrying(range(start, start + 5), event_ids=True)

    stream = UsageStream(store.record, max_batch=10, max_message=5, max_unacknowledged=30)
    acks = stream.run(producer())
    first = asyncio.ensure_future(acks.__anext__())
    await store.entered.wait()  # the first batch is being recorded
    for _ in range(200):  # scheduling turns (not time): the reader runs until it must wait
        await asyncio.sleep(0)
    # In flight, in events: one batch (10) being recorded, the queue (30 - 10 - 5 = 15) full,
    # one message (5) held by the reader.
    assert read == 30
    store.gate.set()
    answers = [await first] + [ack async for ack in acks]
    assert answers[-1].acknowledged_sequence == 1000
    assert len(store.rows) == 1000
    assert max(store.batches) <= 10


async def test_messages_of_many_events_are_recorded_in_batches_of_whole_messages() -> None:
    store = Store()
    store.gate = asyncio.Event()
    messages = [carrying(range(1, 401), producer_id="p1")] + [
        carrying(range(start, start + 400)) for start in range(401, 2001, 400)
    ]

    async def opened() -> list[usage_pb2.StreamUsageRecordsResponse]:
        return await collect(UsageStream(store.record), messages)

    answers = asyncio.ensure_future(opened())
    await store.entered.wait()  # the first batch holds the commit while the rest queue
    store.gate.set()
    acks = await answers
    # Whole messages of 400, as many as fit in 1000: two a batch, the last one alone.
    assert store.batches == [800, 800, 400]
    assert [ack.acknowledged_sequence for ack in acks] == [800, 1600, 2000]
    assert sum(ack.stored_count for ack in acks) == 2000
    assert ("acct_1", "p1:1999") in store.rows


async def test_a_message_of_no_events_ends_the_stream_after_what_came_before() -> None:
    store = Store()
    acks: list[usage_pb2.StreamUsageRecordsResponse] = []
    with pytest.raises(InvalidArgument) as raised:
        async for ack in UsageStream(store.record).run(
            feed([carrying(range(1, 4), "p9"), usage_pb2.StreamUsageRecordsRequest()])
        ):
            acks.append(ack)
    assert raised.value.violations[0].field == "records"
    assert [ack.acknowledged_sequence for ack in acks] == [3]
    assert set(store.rows) == {("acct_1", f"p9:{n}") for n in range(1, 4)}


async def test_a_message_of_too_many_events_ends_the_stream_after_what_came_before() -> None:
    store = Store()
    acks: list[usage_pb2.StreamUsageRecordsResponse] = []
    stream = UsageStream(store.record, max_batch=10, max_message=5, max_unacknowledged=20)
    with pytest.raises(InvalidArgument) as raised:
        async for ack in stream.run(feed([carrying(range(1, 4), "p"), carrying(range(4, 10))])):
            acks.append(ack)
    assert raised.value.violations[0].field == "records"
    assert "1 to 5 events" in raised.value.violations[0].description
    assert acks[-1].acknowledged_sequence == 3
    assert len(store.rows) == 3


async def test_a_sequence_out_of_order_inside_a_message_names_its_place() -> None:
    store = Store()
    broken = carrying(range(1, 4), "p")
    broken.records.append(record(2))
    with pytest.raises(InvalidArgument) as raised:
        await collect(UsageStream(store.record), [broken])
    assert raised.value.violations[0].field == "records[3].sequence"
    # The events before it in the same message are recorded (one batch), then the stream ends.
    assert len(store.rows) == 3


def test_the_bounds_must_leave_room_for_a_batch_and_two_messages() -> None:
    with pytest.raises(ValueError, match="max_unacknowledged"):
        UsageStream(Store().record, max_batch=10, max_message=5, max_unacknowledged=19)

"""The streaming producers against an in-process UsageService of the test's own, on port 0.

The fake stores each event of a message under its id (its own, or `<producer_id>:<sequence>`),
acknowledges the message, and can lose the stream after storing an event and before
acknowledging its message, the case the producer must mend by resending. It counts the records
of every message, so a test sees how the producer packs them. The real server's side is tested in
test_usage_client.py once it is served.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from tally.billing.v1 import usage_pb2, usage_pb2_grpc
from tally_client import AsyncClient, Client, InvalidArgument, PermissionDenied, RetryPolicy, UsageEvent
from tally_client._stream import LOCAL_WRITE_FAILURE, stream_error
from tests.client.live import BOUND_SECONDS, retry_log

QUICK = RetryPolicy(max_attempts=20, initial_backoff=0.01, max_backoff=0.05, total_budget=BOUND_SECONDS)


@dataclass
class FakeUsage(usage_pb2_grpc.UsageServiceServicer):
    """StreamUsageRecords, in memory. `lose_at`: stored counts at which a stream is lost unacknowledged.

    The records of a message are stored one by one; the message is acknowledged once all are,
    with its last sequence number. Reaching a `lose_at` count aborts the stream before that
    acknowledgement: what the message stored until then comes back as replays (`lost_stored`).
    """

    lose_at: set[int] = field(default_factory=set)
    refuse_all: grpc.StatusCode | None = None
    stored: dict[str, int] = field(default_factory=dict)
    producers: list[str] = field(default_factory=list)
    streams: int = 0
    # Per stream, the number of records of each message read.
    messages: list[list[int]] = field(default_factory=list)
    # Messages that named the producer but were not the first of their stream.
    named_later: int = 0
    lost_stored: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def message_count(self) -> int:
        return sum(len(sizes) for sizes in self.messages)

    def StreamUsageRecords(
        self, request_iterator: Iterator[usage_pb2.StreamUsageRecordsRequest], context: grpc.ServicerContext
    ) -> Iterator[usage_pb2.StreamUsageRecordsResponse]:
        sizes: list[int] = []
        with self.lock:
            self.streams += 1
            self.messages.append(sizes)
        if self.refuse_all is not None:
            context.abort(self.refuse_all, "refused by the fake")
        producer = ""
        for number, message in enumerate(request_iterator):
            if number == 0:
                producer = message.producer_id
                self.producers.append(producer)
            elif message.producer_id:
                self.named_later += 1
            sizes.append(len(message.records))
            yield self._store(producer, message, context)

    def _store(
        self, producer: str, message: usage_pb2.StreamUsageRecordsRequest, context: grpc.ServicerContext
    ) -> usage_pb2.StreamUsageRecordsResponse:
        response = usage_pb2.StreamUsageRecordsResponse()
        stored_now = 0
        for item in message.records:
            if item.request.usage_record.service == "bad":
                error = status_pb2.Status(
                    code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="bad service"
                )
                response.failures.add(
                    outcome=usage_pb2.UsageRecordResult.OUTCOME_FAILED, index=item.sequence, error=error
                )
                continue
            event_id = item.request.usage_record.event_id or f"{producer}:{item.sequence}"
            with self.lock:
                replay = event_id in self.stored
                self.stored.setdefault(event_id, item.sequence)
                lose = not replay and len(self.stored) in self.lose_at
                stored_now += not replay
                if lose:
                    self.lost_stored += stored_now
            if lose:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the fake lost the stream")
            response.stored_count += not replay
            response.replay_count += replay
        if message.records:
            response.acknowledged_sequence = message.records[-1].sequence
        return response


def fake_usage(**settings: Any) -> FakeUsage:
    """A FakeUsage; only its stream is implemented, the unary methods stay the base's UNIMPLEMENTED."""
    return FakeUsage(**settings)  # type: ignore[abstract]


@pytest.fixture
def serve():
    servers: list[grpc.Server] = []

    def start(fake: FakeUsage) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        usage_pb2_grpc.add_UsageServiceServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace=None)


def events(count: int) -> list[UsageEvent]:
    return [UsageEvent("acct_1", "api_calls", 1) for _ in range(count)]


def test_a_lost_stream_is_reopened_and_the_unacknowledged_events_resent(serve):
    fake = fake_usage(lose_at={7, 15})
    target = serve(fake)
    with retry_log() as (log, logger), Client(target, retry=QUICK, logger=logger) as client:
        stream = client.usage_stream(producer_id="prod-1", window=5)
        sequences = [stream.send(event) for event in events(20)]
        stream.close()
    assert sequences == list(range(1, 21))
    assert sorted(fake.stored) == sorted(f"prod-1:{n}" for n in range(1, 21))
    assert fake.streams == 3
    assert fake.producers == ["prod-1"] * 3  # the first message of every stream names the producer
    assert log.codes() == ["UNAVAILABLE", "UNAVAILABLE"]
    assert stream.acknowledged_sequence == 20
    assert fake.named_later == 0
    # What a lost message had stored (at least the event each loss came at) was acknowledged only
    # when it came back, as replays.
    assert stream.replay_count == fake.lost_stored >= 2
    assert stream.stored_count + stream.replay_count == 20


def test_a_producer_id_is_made_once_when_not_given(serve):
    fake = fake_usage(lose_at={3})
    target = serve(fake)
    with Client(target, retry=QUICK) as client:
        stream = client.usage_stream()
        for event in events(5):
            stream.send(event)
        stream.close()
    assert len(set(fake.producers)) == 1
    assert fake.producers[0].startswith("prd_")
    assert len(fake.stored) == 5


def test_refused_events_are_reported_not_raised(serve):
    target = serve(fake_usage())
    with Client(target, retry=QUICK) as client:
        stream = client.usage_stream()
        stream.send(UsageEvent("acct_1", "api_calls", 1))
        stream.send(UsageEvent("acct_1", "bad", 1))
        stream.close()
    (failure,) = stream.failures
    assert failure.index == 2
    assert isinstance(failure.error, InvalidArgument)


def test_a_refusal_retrying_cannot_mend_is_raised(serve):
    fake = fake_usage(refuse_all=grpc.StatusCode.PERMISSION_DENIED)
    target = serve(fake)
    with Client(target, retry=QUICK) as client:
        stream = client.usage_stream()
        stream.send(UsageEvent("acct_1", "api_calls", 1))
        with pytest.raises(PermissionDenied):
            stream.close()
    assert fake.streams == 1


def test_floats_are_refused_before_they_are_sent(serve):
    target = serve(fake_usage())
    with Client(target) as client:
        stream = client.usage_stream()
        with pytest.raises(TypeError, match="units"):
            stream.send(UsageEvent("acct_1", "api_calls", 1.5))  # type: ignore[arg-type]
        stream.close()


def test_an_idle_producer_sends_one_event_a_message(serve):
    fake = fake_usage()
    target = serve(fake)
    with Client(target) as client:
        stream = client.usage_stream(window=1)  # each send waits for the previous acknowledgement
        for event in events(5):
            stream.send(event)
        stream.close()
    assert fake.messages == [[1] * 5]


# A busy producer: every event is sent before the stream may open (its token is held back), so
# all of them wait in the outbox when the first message is packed. `lose_at={1}`: the first
# stream is lost on its first event, unacknowledged, and the resent stream packs them all again.
BUSY = 2500
PACKED = [
    pytest.param(set(), [[1000, 1000, 500]], id="one-stream"),
    pytest.param({1}, [[1000], [1000, 1000, 500]], id="resent-after-a-loss"),
]


def assert_packed(fake: FakeUsage, stream: Any, producer: str, messages: list[list[int]]) -> None:
    """A busy producer's `BUSY` events came as `messages` (records per message, per stream), once each."""
    assert fake.messages == messages
    assert fake.message_count < BUSY
    assert fake.producers == [producer] * len(messages)
    assert fake.named_later == 0
    assert sorted(fake.stored) == sorted(f"{producer}:{n}" for n in range(1, BUSY + 1))
    assert stream.acknowledged_sequence == BUSY
    assert (stream.stored_count, stream.replay_count) == (BUSY - fake.lost_stored, fake.lost_stored)


@pytest.mark.parametrize(("lose_at", "messages"), PACKED)
def test_a_busy_producer_packs_waiting_events_into_messages_of_at_most_1000(serve, lose_at, messages):
    fake = fake_usage(lose_at=lose_at)
    target = serve(fake)
    may_open = threading.Event()

    def token() -> str:
        may_open.wait(BOUND_SECONDS)
        return "token"

    with Client(target, retry=QUICK, token_provider=token) as client:
        stream = client.usage_stream(producer_id="busy", window=BUSY)
        for event in events(BUSY):
            stream.send(event)
        may_open.set()
        stream.close()
    assert_packed(fake, stream, "busy", messages)
    assert fake.lost_stored == len(lose_at)


@pytest.mark.parametrize(("lose_at", "messages"), PACKED)
async def test_a_busy_async_producer_packs_waiting_events_into_messages_of_at_most_1000(
    serve, lose_at, messages
):
    fake = fake_usage(lose_at=lose_at)
    target = serve(fake)
    may_open = asyncio.Event()

    async def token() -> str:
        await may_open.wait()
        return "token"

    async with AsyncClient(target, retry=QUICK, token_provider=token) as client:
        stream = client.usage_stream(producer_id="async-busy", window=BUSY)
        for event in events(BUSY):
            await stream.send(event)
        may_open.set()
        await stream.close()
    assert_packed(fake, stream, "async-busy", messages)


async def test_an_idle_async_producer_sends_one_event_a_message(serve):
    fake = fake_usage()
    target = serve(fake)
    async with AsyncClient(target) as client:
        stream = client.usage_stream(window=1)
        for event in events(5):
            await stream.send(event)
        await stream.close()
    assert fake.messages == [[1] * 5]


async def test_the_async_producer_resends_after_a_lost_stream(serve):
    fake = fake_usage(lose_at={4, 9})
    target = serve(fake)
    with retry_log() as (log, logger):
        async with AsyncClient(target, retry=QUICK, logger=logger) as client:
            stream = client.usage_stream(producer_id="async-prod", window=3)
            for event in events(12):
                await stream.send(event)
            await stream.close()
    assert sorted(fake.stored) == sorted(f"async-prod:{n}" for n in range(1, 13))
    assert fake.streams == 3
    assert log.codes() == ["UNAVAILABLE", "UNAVAILABLE"]
    assert stream.acknowledged_sequence == 12
    assert stream.replay_count == fake.lost_stored >= 2
    assert stream.stored_count + stream.replay_count == 12


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        # grpc.aio's own status when a write meets a stream the server already ended: a lost stream.
        (grpc.StatusCode.INTERNAL, LOCAL_WRITE_FAILURE, grpc.StatusCode.UNAVAILABLE),
        # An INTERNAL the server answered stays what it is, and is not retried.
        (grpc.StatusCode.INTERNAL, "the ledger is inconsistent", grpc.StatusCode.INTERNAL),
        (grpc.StatusCode.PERMISSION_DENIED, LOCAL_WRITE_FAILURE, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_only_grpc_aios_local_write_failure_counts_as_a_lost_stream(code, details, expected):
    assert stream_error(_RpcError(code, details)).code is expected

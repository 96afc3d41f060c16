"""The streaming producers against an in-process UsageService of the test's own, on port 0.

The fake stores each event under its id (its own, or `<producer_id>:<sequence>`), acknowledges
each message, and can lose the stream after storing an event and before acknowledging it, the
case the producer must mend by resending. The real server's side is tested in
test_usage_client.py once it is served.
"""

from __future__ import annotations

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
    """StreamUsageRecords, in memory. `lose_at`: stored counts at which a stream is lost unacknowledged."""

    lose_at: set[int] = field(default_factory=set)
    refuse_all: grpc.StatusCode | None = None
    stored: dict[str, int] = field(default_factory=dict)
    producers: list[str] = field(default_factory=list)
    streams: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def StreamUsageRecords(
        self, request_iterator: Iterator[usage_pb2.StreamUsageRecordsRequest], context: grpc.ServicerContext
    ) -> Iterator[usage_pb2.StreamUsageRecordsResponse]:
        with self.lock:
            self.streams += 1
        if self.refuse_all is not None:
            context.abort(self.refuse_all, "refused by the fake")
        producer = ""
        for number, message in enumerate(request_iterator):
            if number == 0:
                producer = message.producer_id
                self.producers.append(producer)
            if message.request.usage_record.service == "bad":
                error = status_pb2.Status(
                    code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="bad service"
                )
                yield usage_pb2.StreamUsageRecordsResponse(
                    acknowledged_sequence=message.sequence,
                    failures=[
                        usage_pb2.UsageRecordResult(
                            outcome=usage_pb2.UsageRecordResult.OUTCOME_FAILED,
                            index=message.sequence,
                            error=error,
                        )
                    ],
                )
                continue
            event_id = message.request.usage_record.event_id or f"{producer}:{message.sequence}"
            with self.lock:
                replay = event_id in self.stored
                self.stored.setdefault(event_id, message.sequence)
                lose = not replay and len(self.stored) in self.lose_at
            if lose:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the fake lost the stream")
            yield usage_pb2.StreamUsageRecordsResponse(
                acknowledged_sequence=message.sequence,
                stored_count=0 if replay else 1,
                replay_count=int(replay),
            )


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
    # The two events stored just before each loss were acknowledged only when they came back, as replays.
    assert (stream.stored_count, stream.replay_count) == (18, 2)


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

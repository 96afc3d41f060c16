"""StreamUsageRecords: usage events in, acknowledgements out, with a bound on what is unacknowledged.

A reader task takes requests off the stream into a queue; the writer takes everything queued
(at least one request, at most `max_batch`), records it as one batch (one transaction, one
commit) and answers with the largest sequence number of the batch: everything up to it is
durable or refused. While a batch commits, the reader goes on filling the queue, so a busy
stream gets large batches and an idle one an answer per event. The queue is bounded: once it
holds `max_unacknowledged - max_batch` requests the reader stops reading, gRPC's flow control
stops the producer, and the server never holds more than `max_unacknowledged` events of one
stream that it has not acknowledged.

Event ids: an event with its own id keeps it. On a stream whose first request names a
`producer_id`, an event without an id gets `<producer_id>:<sequence>`, so a producer that lost
its stream and sends everything after the last acknowledgement again sends the same ids, and
what was stored already is a replay. On a stream without a producer_id, an event without an id
is refused (the server would have to invent one, and a resent event would be stored twice).

A sequence number that does not increase, or is below 1, ends the stream with INVALID_ARGUMENT
after the events before it are recorded and acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence

from billing_svc.usage.domain import Outcome, RecordResult, UsageInput
from billing_svc.usage.usage_proto import input_from_proto, result_to_proto
from core.errors import InvalidArgument
from tally.billing.v1 import usage_pb2

RecordBatch = Callable[[Sequence[UsageInput]], Awaitable[list[RecordResult]]]

MAX_BATCH = 500
MAX_UNACKNOWLEDGED = 2000
MAX_PRODUCER_ID = 64
_PRODUCER_ID = re.compile(f"^[ -~]{{1,{MAX_PRODUCER_ID}}}$")
_END = object()  # the producer closed its side


class _StreamError(Exception):
    """Ends the stream after what came before it is acknowledged."""

    def __init__(self, error: InvalidArgument) -> None:
        super().__init__(str(error))
        self.error = error


def _check_producer_id(value: str) -> str:
    if value and not _PRODUCER_ID.match(value):
        raise InvalidArgument.field(
            "producer_id", f"must be 1 to {MAX_PRODUCER_ID} printable ASCII characters (space to ~)"
        )
    return value


def _missing_id() -> RecordResult:
    return RecordResult(
        Outcome.FAILED,
        error=InvalidArgument.field(
            "usage_record.event_id",
            "a streamed event needs an event id, or the stream a producer_id on its first request",
        ),
    )


@dataclasses.dataclass
class _Batch:
    sequences: list[int] = dataclasses.field(default_factory=list)
    inputs: list[UsageInput] = dataclasses.field(default_factory=list)
    refused: dict[int, RecordResult] = dataclasses.field(default_factory=dict)  # sequence -> result
    last: int = 0
    error: _StreamError | None = None


class UsageStream:
    """One StreamUsageRecords call."""

    def __init__(
        self,
        record_batch: RecordBatch,
        *,
        max_batch: int = MAX_BATCH,
        max_unacknowledged: int = MAX_UNACKNOWLEDGED,
    ) -> None:
        if not 1 <= max_batch < max_unacknowledged:
            raise ValueError("need 1 <= max_batch < max_unacknowledged")
        self._record_batch = record_batch
        self._max_batch = max_batch
        self._queue: asyncio.Queue[object] = asyncio.Queue(max_unacknowledged - max_batch)
        self._producer_id = ""
        self._previous = 0

    async def run(
        self, requests: AsyncIterable[usage_pb2.StreamUsageRecordsRequest]
    ) -> AsyncIterator[usage_pb2.StreamUsageRecordsResponse]:
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                batch, ended = await self._next_batch()
                if batch.sequences or batch.refused:
                    yield await self._record(batch)
                if batch.error is not None:
                    raise batch.error.error
                if ended:
                    break
            await reader  # its exception, if the stream broke, is the call's
        finally:
            reader.cancel()

    async def _read(self, requests: AsyncIterable[usage_pb2.StreamUsageRecordsRequest]) -> None:
        try:
            async for request in requests:
                await self._queue.put(request)
        finally:
            await self._queue.put(_END)

    async def _next_batch(self) -> tuple[_Batch, bool]:
        """Everything queued, waiting for the first; stops at max_batch, the end, or a bad sequence."""
        batch = _Batch()
        item = await self._queue.get()
        while True:
            if item is _END:
                return batch, True
            assert isinstance(item, usage_pb2.StreamUsageRecordsRequest)
            try:
                self._take(batch, item)
            except _StreamError as exc:
                batch.error = exc
                return batch, True
            if len(batch.sequences) + len(batch.refused) >= self._max_batch or self._queue.empty():
                return batch, False
            item = self._queue.get_nowait()

    def _take(self, batch: _Batch, request: usage_pb2.StreamUsageRecordsRequest) -> None:
        if self._previous == 0:
            try:
                self._producer_id = _check_producer_id(request.producer_id)
            except InvalidArgument as exc:
                raise _StreamError(exc) from None
        if request.sequence <= self._previous:
            raise _StreamError(
                InvalidArgument.field(
                    "sequence",
                    f"must be larger than the previous request's ({self._previous}); got {request.sequence}",
                )
            )
        self._previous = batch.last = request.sequence
        item = input_from_proto(request.request)
        if not item.event_id and not item.request_id:
            if not self._producer_id:
                batch.refused[request.sequence] = _missing_id()
                return
            item = dataclasses.replace(item, event_id=f"{self._producer_id}:{request.sequence}")
        batch.sequences.append(request.sequence)
        batch.inputs.append(item)

    async def _record(self, batch: _Batch) -> usage_pb2.StreamUsageRecordsResponse:
        results = await self._record_batch(batch.inputs) if batch.inputs else []
        response = usage_pb2.StreamUsageRecordsResponse(acknowledged_sequence=batch.last)
        by_sequence = dict(zip(batch.sequences, results, strict=True))
        by_sequence.update(batch.refused)
        for sequence in sorted(by_sequence):
            result = by_sequence[sequence]
            if result.outcome is Outcome.FAILED:
                response.failures.append(result_to_proto(result, sequence))
            elif result.outcome is Outcome.REPLAY:
                response.replay_count += 1
            else:
                response.stored_count += 1
        return response

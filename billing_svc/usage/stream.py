"""StreamUsageRecords: usage events in, acknowledgements out, with a bound on what is unacknowledged.

A request message carries up to `max_message` events, each with its sequence number. A reader
task takes messages off the stream into a queue; the writer takes the queued messages (at least
one, then whole messages while the batch stays within `max_batch` events), records their events
as one batch (one transaction, one commit) and answers with the largest sequence number of the
batch: everything up to it is durable or refused. While a batch commits, the reader goes on
filling the queue, so a busy stream gets large batches and an idle one an answer per message.

The bound is counted in events: the batch being recorded (at most `max_batch`), the queue (the
reader waits while another message would take it past `max_unacknowledged - max_batch -
max_message`) and the one message the reader holds while it waits (at most `max_message`).
While the reader waits, gRPC's flow control stops the producer, so the server never holds more
than `max_unacknowledged` events of one stream that it has not acknowledged.

Every event meets the text policy that interceptors/validation.py applies to unary requests
(core.text_policy) and the card-number policy (core.card_policy): an event with a bad string is
refused alone, naming the field.

Event ids: an event with its own id keeps it. On a stream whose first message names a
`producer_id`, an event without an id gets `<producer_id>:<sequence>`, so a producer that lost
its stream and sends everything after the last acknowledgement again sends the same ids, and
what was stored already is a replay. On a stream without a producer_id, an event without an id
is refused (the server would have to invent one, and a resent event would be stored twice).

A sequence number that does not increase, or is below 1, or a message with no events or more
than `max_message`, ends the stream with INVALID_ARGUMENT after the events before it are
recorded and acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence

from billing_svc.usage.domain import Outcome, RecordResult, UsageInput
from billing_svc.usage.usage_proto import add_result, input_from_proto
from core.card_policy import card_violations
from core.errors import InvalidArgument
from core.text_policy import text_violations
from tally.billing.v1 import usage_pb2

RecordBatch = Callable[[Sequence[UsageInput]], Awaitable[list[RecordResult]]]

MAX_MESSAGE = 1000  # events in one request message, as in BatchCreateUsageRecords
MAX_BATCH = 1000
MAX_UNACKNOWLEDGED = 4000
MAX_PRODUCER_ID = 64
_PRODUCER_ID = re.compile(f"^[ -~]{{1,{MAX_PRODUCER_ID}}}$")
Message = usage_pb2.StreamUsageRecordsRequest


def _first(pair: tuple[int, RecordResult]) -> int:
    return pair[0]


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
        max_message: int = MAX_MESSAGE,
        max_unacknowledged: int = MAX_UNACKNOWLEDGED,
    ) -> None:
        if not 1 <= max_message <= max_batch or max_unacknowledged < max_batch + 2 * max_message:
            raise ValueError(
                "need 1 <= max_message <= max_batch and max_unacknowledged >= max_batch + 2 * max_message"
            )
        self._record_batch = record_batch
        self._max_batch = max_batch
        self._max_message = max_message
        self._capacity = max_unacknowledged - max_batch - max_message
        self._queue: deque[Message | None] = deque()  # None: the producer closed its side
        self._queued = 0  # events in the queue
        self._changed = asyncio.Condition()
        self._first = True
        self._producer_id = ""
        self._previous = 0

    async def run(
        self, requests: AsyncIterable[Message]
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

    async def _read(self, requests: AsyncIterable[Message]) -> None:
        try:
            async for request in requests:
                size = len(request.records)
                async with self._changed:
                    # An empty queue takes any message, so one too large is read (and refused).
                    await self._changed.wait_for(functools.partial(self._has_room, size))
                    self._queue.append(request)
                    self._queued += size
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._queue.append(None)
                self._changed.notify_all()

    def _has_room(self, size: int) -> bool:
        return not self._queue or self._queued + size <= self._capacity

    async def _next_batch(self) -> tuple[_Batch, bool]:
        """Whole queued messages, waiting for the first, up to max_batch events; stops at the end
        of the stream or at a bad message."""
        messages: list[Message] = []
        ended = False
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._queue))
            taken = 0
            while self._queue:
                message = self._queue[0]
                if message is None:
                    ended = True
                    break
                size = len(message.records)
                if messages and taken + size > self._max_batch:
                    break
                self._queue.popleft()
                self._queued -= size
                taken += size
                messages.append(message)
            self._changed.notify_all()
        batch = _Batch()
        for message in messages:
            try:
                self._take(batch, message)
            except _StreamError as exc:
                batch.error = exc
                return batch, True
        return batch, ended

    def _take(self, batch: _Batch, message: Message) -> None:
        if self._first:
            self._first = False
            try:
                self._producer_id = _check_producer_id(message.producer_id)
            except InvalidArgument as exc:
                raise _StreamError(exc) from None
        if not 1 <= len(message.records) <= self._max_message:
            raise _StreamError(
                InvalidArgument.field(
                    "records",
                    f"must hold 1 to {self._max_message} events a message; got {len(message.records)}",
                )
            )
        for index, record in enumerate(message.records):
            if record.sequence <= self._previous:
                raise _StreamError(
                    InvalidArgument.field(
                        f"records[{index}].sequence",
                        f"must be larger than the previous event's ({self._previous}); got {record.sequence}",
                    )
                )
            self._previous = batch.last = record.sequence
            # The text and card-number policies the interceptor applies to unary requests, event by
            # event here.
            violations = text_violations(record.request)
            cards = card_violations(record.request) if not violations else []
            if violations or cards:
                error = InvalidArgument(violations or cards, reason="INVALID_TEXT" if violations else None)
                batch.refused[record.sequence] = RecordResult(Outcome.FAILED, error=error)
                continue
            request = record.request
            if request.usage_record.event_id or request.request_id:
                item = input_from_proto(request)
            elif self._producer_id:
                item = input_from_proto(request, event_id=f"{self._producer_id}:{record.sequence}")
            else:
                batch.refused[record.sequence] = _missing_id()
                continue
            batch.sequences.append(record.sequence)
            batch.inputs.append(item)

    async def _record(self, batch: _Batch) -> usage_pb2.StreamUsageRecordsResponse:
        results = await self._record_batch(batch.inputs) if batch.inputs else []
        response = usage_pb2.StreamUsageRecordsResponse(acknowledged_sequence=batch.last)
        answered: Iterable[tuple[int, RecordResult]] = zip(batch.sequences, results, strict=True)
        if batch.refused:  # else the answers are in sequence order already
            answered = sorted([*answered, *batch.refused.items()], key=_first)
        for sequence, result in answered:
            if result.outcome is Outcome.FAILED:
                add_result(response.failures, result, sequence)
            elif result.outcome is Outcome.REPLAY:
                response.replay_count += 1
            else:
                response.stored_count += 1
        return response

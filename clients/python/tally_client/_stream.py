"""Streaming producers: send events on one StreamUsageRecords call, resend what a lost stream lost.

Each event gets the producer's next sequence number. A message carries every event waiting to
be written when the writer gets to it, up to MAX_RECORDS_PER_MESSAGE: an idle producer sends
one event a message, a busy one full messages, so grpc's cost per message is paid per batch
rather than per event. The first message of a stream names the producer. The server
acknowledges a sequence number once every event up to it is committed (or refused, with the
reason); the producer keeps the events it has not seen acknowledged and, when the stream
breaks, opens another and sends them again, in order, with the same sequence numbers, packed
the same way. An event without an id of its own gets `<producer_id>:<sequence>` from the
server, so a resent event is a replay, never a second record. At most `window` events wait
for acknowledgement: send() blocks past that.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio

from tally.billing.v1 import usage_pb2
from tally_client._config import Config
from tally_client._core import BatchItem, UsageEvent, batch_item, new_id, usage_request
from tally_client._errors import TallyError, Unavailable, error_from_rpc
from tally_client._retry import RetryState

Message = usage_pb2.StreamUsageRecordsRequest
Record = usage_pb2.SequencedUsageRecord

# The contract's limit on the events of one StreamUsageRecordsRequest.
MAX_RECORDS_PER_MESSAGE = 1000


class _Ledger:
    """The state both producers share: pending events by sequence, acknowledgements, outcomes."""

    def __init__(self, producer_id: str | None, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if producer_id is not None and not 1 <= len(producer_id) <= 64:
            raise ValueError("producer_id must be 1 to 64 printable ASCII characters")
        self.producer_id = producer_id or new_id("prd")
        self.window = window
        self.pending: dict[int, Record] = {}
        self.next_sequence = 1
        self.acknowledged = 0
        self.stored_count = 0
        self.replay_count = 0
        self.failures: list[BatchItem] = []
        self.error: TallyError | None = None
        self.closing = False

    def add(self, event: UsageEvent) -> Record:
        # No id made here: the server's `<producer_id>:<sequence>` is just as stable.
        record = Record(sequence=self.next_sequence, request=usage_request(event, generate_id=False))
        self.pending[record.sequence] = record
        self.next_sequence += 1
        return record

    def acknowledge(self, response: usage_pb2.StreamUsageRecordsResponse) -> bool:
        """Apply an acknowledgement; True when it moved the acknowledged sequence on."""
        self.failures.extend(batch_item(failure) for failure in response.failures)
        self.stored_count += response.stored_count
        self.replay_count += response.replay_count
        moved = response.acknowledged_sequence > self.acknowledged
        self.acknowledged = max(self.acknowledged, response.acknowledged_sequence)
        for sequence in [s for s in self.pending if s <= self.acknowledged]:
            del self.pending[sequence]
        return moved

    def opening(self) -> list[Record]:
        """What a new stream sends first: every unacknowledged event, in sequence order."""
        return list(self.pending.values())

    def message(self, records: list[Record], first: bool) -> Message:
        """One message of `records`; the first of a stream names the producer."""
        return Message(producer_id=self.producer_id if first else "", records=records)


def _waiting(first: Record, take: Callable[[], Record | None]) -> tuple[list[Record], bool]:
    """`first` and the records already waiting behind it in the outbox (`take` does not wait),
    up to a message's worth; the flag is False once the outbox's end (None) was met."""
    records = [first]
    while len(records) < MAX_RECORDS_PER_MESSAGE:
        try:
            record = take()
        except (queue.Empty, asyncio.QueueEmpty):
            break
        if record is None:
            return records, False
        records.append(record)
    return records, True


def _broken() -> TallyError:
    return Unavailable(grpc.StatusCode.UNAVAILABLE, "the stream ended before every event was acknowledged")


# When a write fails because the stream is already gone (the server refused it or went away
# while the message was on its way), grpc.aio ends the call with a status of its own making,
# INTERNAL with these details, and the server's status is lost. Nothing was answered: the
# stream is lost like any other, and resending is safe because every event keeps its id.
LOCAL_WRITE_FAILURE = "Internal error from Core"


def stream_error(exc: grpc.RpcError) -> TallyError:
    """The error a broken stream's RpcError stands for."""
    if exc.code() is grpc.StatusCode.INTERNAL and exc.details() == LOCAL_WRITE_FAILURE:
        return Unavailable(
            grpc.StatusCode.UNAVAILABLE,
            "the stream was lost while an event was being written"
            " (grpc.aio: INTERNAL, Internal error from Core)",
        )
    return error_from_rpc(exc)


def _log_reconnect(config: Config, error: TallyError, attempt: int, delay: float, pending: int) -> None:
    config.logger.warning(
        "tally usage stream broke with %s (attempt %d); resending %d events in %.3f s",
        error.code.name,
        attempt,
        pending,
        delay,
        extra={
            "tally_method": "StreamUsageRecords",
            "tally_code": error.code.name,
            "tally_attempt": attempt,
            "tally_delay": delay,
        },
    )


class UsageStream:
    """A blocking streaming producer, its acknowledgements read by a thread of its own.

    `send(event)` returns the event's sequence number; `flush()` waits until every sent event
    is acknowledged; `close()` flushes and ends the stream. A failure that retrying cannot
    mend is raised by the next send, flush or close. Refused events are in `failures`.
    """

    def __init__(
        self,
        rpc: Callable[..., Iterator[usage_pb2.StreamUsageRecordsResponse]],
        metadata: Callable[[], tuple[tuple[str, str], ...]],
        config: Config,
        *,
        producer_id: str | None = None,
        window: int = 1000,
    ) -> None:
        self._rpc = rpc
        self._metadata = metadata
        self._config = config
        self._ledger = _Ledger(producer_id, window)
        self._changed = threading.Condition()
        self._outbox: queue.Queue[Record | None] = queue.Queue()
        self._stopped = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="tally-usage-stream", daemon=True)
        self._thread.start()

    @property
    def producer_id(self) -> str:
        return self._ledger.producer_id

    @property
    def acknowledged_sequence(self) -> int:
        return self._ledger.acknowledged

    @property
    def failures(self) -> list[BatchItem]:
        with self._changed:
            return list(self._ledger.failures)

    @property
    def stored_count(self) -> int:
        return self._ledger.stored_count

    @property
    def replay_count(self) -> int:
        return self._ledger.replay_count

    def send(self, event: UsageEvent) -> int:
        with self._changed:
            ledger = self._ledger
            self._changed.wait_for(lambda: ledger.error is not None or len(ledger.pending) < ledger.window)
            self._raise_error()
            if ledger.closing:
                raise RuntimeError("the stream is closed")
            record = ledger.add(event)
            self._outbox.put(record)
            return record.sequence

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every sent event is acknowledged; False if `timeout` passed first."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: self._ledger.error is not None or not self._ledger.pending, timeout=timeout
            )
            self._raise_error()
            return done

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._changed:
                self._ledger.closing = True
                self._outbox.put(None)
            self._stopped.set()
            self._thread.join()

    def __enter__(self) -> UsageStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _raise_error(self) -> None:
        if self._ledger.error is not None:
            raise self._ledger.error

    def _requests(self, outbox: queue.Queue[Record | None]) -> Iterator[Message]:
        """The call's messages: each packs what waits in the outbox when grpc asks for the next."""
        first, more = True, True
        while more and (record := outbox.get()) is not None:
            records, more = _waiting(record, outbox.get_nowait)
            yield self._ledger.message(records, first)
            first = False

    def _open(self) -> Iterator[usage_pb2.StreamUsageRecordsResponse]:
        with self._changed:
            outbox: queue.Queue[Record | None] = queue.Queue()
            for record in self._ledger.opening():
                outbox.put(record)
            if self._ledger.closing:
                outbox.put(None)
            self._outbox = outbox
        return self._rpc(self._requests(outbox), metadata=self._metadata())

    def _run(self) -> None:
        state = RetryState(self._config.retry, True, time.monotonic())
        while True:
            state.attempts += 1
            try:
                for response in self._open():
                    with self._changed:
                        if self._ledger.acknowledge(response):
                            state = RetryState(self._config.retry, True, time.monotonic(), attempts=1)
                        self._changed.notify_all()
                error = _broken()
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
            with self._changed:
                if self._ledger.closing and not self._ledger.pending:
                    return
                # The old stream is gone: a send must not go into its outbox any more.
                self._outbox.put(None)
                delay = state.next_delay(error, time.monotonic())
                if delay is None:
                    self._ledger.error = error
                    self._changed.notify_all()
                    return
                _log_reconnect(self._config, error, state.attempts, delay, len(self._ledger.pending))
            if self._stopped.wait(delay):
                return


class AsyncUsageStream:
    """The asyncio twin of UsageStream: `await send(event)`, `await flush()`, `await close()`."""

    def __init__(
        self,
        rpc: Callable[..., Any],
        metadata: Callable[[], Awaitable[tuple[tuple[str, str], ...]]],
        config: Config,
        *,
        producer_id: str | None = None,
        window: int = 1000,
    ) -> None:
        self._rpc = rpc
        self._metadata = metadata
        self._config = config
        self._ledger = _Ledger(producer_id, window)
        self._changed = asyncio.Condition()
        self._outbox: asyncio.Queue[Record | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def producer_id(self) -> str:
        return self._ledger.producer_id

    @property
    def acknowledged_sequence(self) -> int:
        return self._ledger.acknowledged

    @property
    def failures(self) -> list[BatchItem]:
        return list(self._ledger.failures)

    @property
    def stored_count(self) -> int:
        return self._ledger.stored_count

    @property
    def replay_count(self) -> int:
        return self._ledger.replay_count

    async def send(self, event: UsageEvent) -> int:
        async with self._changed:
            ledger = self._ledger
            await self._changed.wait_for(
                lambda: ledger.error is not None or len(ledger.pending) < ledger.window
            )
            self._raise_error()
            if ledger.closing:
                raise RuntimeError("the stream is closed")
            record = ledger.add(event)
            self._outbox.put_nowait(record)
            return record.sequence

    async def flush(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._ledger.error is not None or not self._ledger.pending)
            self._raise_error()

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            async with self._changed:
                self._ledger.closing = True
                self._outbox.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=self._config.default_timeout)
            except TimeoutError:
                self._task.cancel()

    async def __aenter__(self) -> AsyncUsageStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _raise_error(self) -> None:
        if self._ledger.error is not None:
            raise self._ledger.error

    async def _write(self, call: Any, outbox: asyncio.Queue[Record | None]) -> None:
        """Write the outbox to the call until closing, each message packing what waits in it."""
        first, more = True, True
        with contextlib.suppress(grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            while more and (record := await outbox.get()) is not None:
                records, more = _waiting(record, outbox.get_nowait)
                await call.write(self._ledger.message(records, first))
                first = False
            await call.done_writing()

    async def _open(self) -> tuple[Any, asyncio.Task[None]]:
        async with self._changed:
            outbox: asyncio.Queue[Record | None] = asyncio.Queue()
            for record in self._ledger.opening():
                outbox.put_nowait(record)
            if self._ledger.closing:
                outbox.put_nowait(None)
            self._outbox = outbox
        call = self._rpc(metadata=await self._metadata())
        return call, asyncio.get_running_loop().create_task(self._write(call, outbox))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        state = RetryState(self._config.retry, True, loop.time())
        while True:
            state.attempts += 1
            call, writing = await self._open()
            try:
                async for response in call:
                    async with self._changed:
                        if self._ledger.acknowledge(response):
                            state = RetryState(self._config.retry, True, loop.time(), attempts=1)
                        self._changed.notify_all()
                error = _broken()
            except grpc.RpcError as exc:
                error = stream_error(exc)
            finally:
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
            async with self._changed:
                if self._ledger.closing and not self._ledger.pending:
                    return
                self._outbox.put_nowait(None)
                delay = state.next_delay(error, loop.time())
                if delay is None:
                    self._ledger.error = error
                    self._changed.notify_all()
                    return
                _log_reconnect(self._config, error, state.attempts, delay, len(self._ledger.pending))
            await asyncio.sleep(delay)

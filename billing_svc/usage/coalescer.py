"""Group commit for CreateUsageRecord: concurrent single events share one batch, and one commit.

Each event waits in a queue. When no flush runs, the first arrival starts one; the flush takes
everything queued (up to `max_batch`) into one `record_usage_batch`, answers each waiting caller
with its own result once the batch has committed, then takes what queued meanwhile, until the
queue is empty. Under light load a flush holds one event and costs what a lone call did; under
load, N callers pay for about one transaction instead of N. Nothing waits on a timer.

A caller whose call is cancelled while it waits (a passed deadline) gets no answer, but its event
is still recorded with the others: a retry is then a replay, as for any lost reply. A flush that
fails as a whole (the database away) fails each of its callers with that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from billing_svc.usage.domain import RecordResult, UsageInput
from core.principal import Caller

RecordBatch = Callable[[Caller, Sequence[UsageInput]], Awaitable[list[RecordResult]]]


@dataclass
class _Waiting:
    caller: Caller
    item: UsageInput
    answer: asyncio.Future[RecordResult]


class Coalescer:
    def __init__(self, record_batch: RecordBatch, *, max_batch: int = 1000):
        self._record_batch = record_batch
        self._max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._flushing: asyncio.Task[None] | None = None
        self.flushes = 0  # batches recorded so far, for tests and measurements

    async def record(self, caller: Caller, item: UsageInput) -> RecordResult:
        """Record `item` in the next batch; its result once the batch has committed.

        Only callers that are not confined to an account share batches: a batch is checked with
        one caller (for the customer confinement), which must hold for all of its events."""
        if caller.customer_account is not None:
            (result,) = await self._record_batch(caller, [item])
            return result
        answer: asyncio.Future[RecordResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(caller, item, answer))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush_all(), name="usage-group-commit")
        return await answer

    async def _flush_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                await self._flush(batch)
        finally:
            self._flushing = None

    async def _flush(self, batch: list[_Waiting]) -> None:
        self.flushes += 1
        try:
            results = await self._record_batch(batch[0].caller, [waiting.item for waiting in batch])
        except Exception as exc:
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(exc)
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.answer.done():  # its caller may have gone (cancelled)
                waiting.answer.set_result(result)

"""The group commit of CreateUsageRecord: who shares a batch, and who gets which answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from billing_svc.usage.coalescer import Coalescer
from billing_svc.usage.domain import Outcome, RecordResult, UsageInput
from core.errors import Unavailable
from core.principal import Caller, Principal, Role

SERVICE = Caller(Principal("svc_meter", Role.SERVICE, frozenset({"usage:write"})), "CreateUsageRecord")


def item(n: int) -> UsageInput:
    return UsageInput(account_id="acct_1", service="api_calls", units=str(n), event_id=f"e{n}")


class GatedBatches:
    """A stand-in for record_usage_batch that records each batch and holds it until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self, caller: Caller, items: Sequence[UsageInput]) -> list[RecordResult]:
        self.batches.append([entry.event_id for entry in items])
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise Unavailable("the database is unavailable; retry with backoff")
        # A result that says which event it answers: the event id comes back as the error text.
        return [RecordResult(Outcome.FAILED, error=Unavailable(entry.event_id)) for entry in items]


async def test_arrivals_during_a_flush_share_the_next_one() -> None:
    batches = GatedBatches()
    coalescer = Coalescer(batches, max_batch=3)
    first = asyncio.create_task(coalescer.record(SERVICE, item(0)))
    await batches.started.wait()  # the first flush runs, holding event 0 alone
    later = [asyncio.create_task(coalescer.record(SERVICE, item(n))) for n in range(1, 6)]
    await asyncio.sleep(0)  # let them queue
    batches.release.set()
    results = await asyncio.gather(first, *later)
    assert batches.batches == [["e0"], ["e1", "e2", "e3"], ["e4", "e5"]]
    assert [result.error.message for result in results if result.error] == [f"e{n}" for n in range(6)]
    assert coalescer.flushes == 3


async def test_a_failed_flush_fails_each_of_its_callers_and_the_next_flush_runs() -> None:
    batches = GatedBatches()
    coalescer = Coalescer(batches)
    batches.fail = True
    waiting = [asyncio.create_task(coalescer.record(SERVICE, item(n))) for n in range(3)]
    await batches.started.wait()
    batches.release.set()
    for task in waiting:
        with pytest.raises(Unavailable):
            await task
    batches.fail = False
    result = await coalescer.record(SERVICE, item(9))
    assert result.error is not None and result.error.message == "e9"


async def test_a_cancelled_caller_does_not_stop_the_batch() -> None:
    batches = GatedBatches()
    coalescer = Coalescer(batches)
    gone = asyncio.create_task(coalescer.record(SERVICE, item(0)))
    await batches.started.wait()
    stays = asyncio.create_task(coalescer.record(SERVICE, item(1)))
    await asyncio.sleep(0)
    gone.cancel()
    batches.release.set()
    result = await stays
    assert result.error is not None and result.error.message == "e1"
    assert batches.batches == [["e0"], ["e1"]]


async def test_callers_confined_to_an_account_are_not_coalesced() -> None:
    batches = GatedBatches()
    batches.release.set()
    coalescer = Coalescer(batches)
    customer = Caller(
        Principal("usr_c", Role.CUSTOMER, frozenset(), account_id="acct_1"), "CreateUsageRecord"
    )
    await coalescer.record(customer, item(0))
    assert coalescer.flushes == 0 and batches.batches == [["e0"]]

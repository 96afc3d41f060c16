"""AdvanceTestClock: move a clock forward, running the billing work that falls due on the way.

One transaction per piece of work. Each step locks the clock row, finds the clock's subscription
that falls due first (due_time, then id) at or before the target, moves `frozen_time` to that due
time, runs that subscription's work at it (billing_svc/subscriptions/work.py) and commits. When
nothing more is due by the target, the last step moves the clock to the target. So:

- the work runs in time order, each piece at its own due time, across every subscription and
  account of the clock; other clocks' and wall-clock accounts' subscriptions are never read;
- a crash, a cancelled call or a failing piece of work leaves the clock at the due time of the
  last piece that committed, with exactly that work done; the same advance called again goes on
  from there. Advancing is idempotent per target: at the target, nothing is due and nothing runs;
- the clock's invoices due for automatic collection (billing_svc/collection.py) are collected in the
  same time order (a subscription's boundary first when both fall due at once): the step moves the
  clock to the collection's time and holds the invoice, commits, and then charges it with no
  transaction open and records the outcome (a dunning step, a retry's time) in one more
  transaction. A 10-day advance over a 3,5,7 retry schedule runs every retry, each at its time.
  Collections are not listed in the response's work (its kinds are the subscriptions');
- one call runs at most `max_work_per_advance` pieces (MAX_WORK_PER_ADVANCE) and then fails with
  FAILED_PRECONDITION ADVANCE_WORK_LIMIT, the clock at the last committed step; calling again with
  the same target goes on. A failure rather than a partial success, so that a request id's
  stored response is always that of a complete advance;
- a draft invoice of the clock's accounts whose grace period ends on the way is finalized at that
  time, as a piece of work of its own, in the same time order (deps.finalize_draft); it is not
  reported as billing work (the invoice's own events have it).

Request ids: an IdempotentRunner claims its key in the transaction of the change, and an advance
has many. So an advance with a request_id first looks for a stored response (a replay returns it,
and a different request under the key is refused before anything moves), then runs the steps, then
stores its answer under the key in one more transaction. A call that dies before that last
transaction stored nothing; its retry runs the advance again, which goes on from where the clock
stopped. Its response then lists the work that call ran: the work a crashed attempt committed is
not in it (the subscriptions' own records have it). The same holds for two concurrent duplicates:
they take turns step by step, and the response stored (and replayed to both) is the first to
finish's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from billing_svc.clocks import domain
from billing_svc.clocks.domain import Advanced, BillingWork, DueSubscription, TestClock
from billing_svc.clocks.ports import DoneWork, DueCollection
from billing_svc.clocks.unit_of_work import TestClocksUnitOfWork
from billing_svc.clocks.use_cases import TestClockDeps, audit, load, require_id
from core.principal import Caller


@dataclass(frozen=True)
class AdvanceTestClock:
    id: str
    frozen_time: datetime  # the target


@dataclass(frozen=True)
class _Step:
    clock: TestClock
    work: list[BillingWork]
    ran: tuple[datetime, str] | None  # (due time, subscription id) of the work run; None: finished


async def advance_test_clock(
    deps: TestClockDeps, caller: Caller, clock_id: str, target: datetime | None
) -> Advanced:
    require_id(clock_id)
    command = AdvanceTestClock(clock_id, domain.check_target(target))
    replayed = await deps.advance_runner.replay(caller, command)
    if replayed is not None:
        return replayed.value
    result = await _run_steps(deps, caller, command)
    if not caller.request_id:
        return result

    async def store(uow: TestClocksUnitOfWork) -> Advanced:
        return result

    # A concurrent duplicate may have stored its answer first: the runner then replays that one.
    return (await deps.advance_runner.run(caller, command, store)).value


async def _run_steps(deps: TestClockDeps, caller: Caller, command: AdvanceTestClock) -> Advanced:
    work: list[BillingWork] = []
    ran: tuple[datetime, str] | None = None
    steps = 0
    while True:
        step = await _step(
            deps, caller, command, first=steps == 0, previous=ran, may_work=steps < deps.max_work_per_advance
        )
        work += step.work
        if step.ran is None:
            return Advanced(step.clock, tuple(work))
        ran, steps = step.ran, steps + 1


async def _step(
    deps: TestClockDeps,
    caller: Caller,
    command: AdvanceTestClock,
    *,
    first: bool,
    previous: tuple[datetime, str] | None,
    may_work: bool,
) -> _Step:
    target = command.frozen_time
    async with deps.new_uow() as uow:
        clock = await load(uow, command.id)
        if first:
            domain.check_advance(clock, target)
        elif clock.frozen_time >= target:
            # A concurrent advance to a later time went past the target; the work due by then is
            # done, since every advance runs the earliest due work first.
            return _Step(clock, [], None)
        due = await uow.test_clocks.next_due(clock.id, target)
        draft = await _next_draft(deps, uow, clock, target)
        collection = await _next_collection(deps, uow, clock, target)
        # Earliest first. On a tie a draft's finalizing goes first (it may schedule a collection at
        # that time), then a boundary, then a collection (a renewal's invoice before its charge).
        if draft is not None and all(
            other is None or draft.due_time <= other.due_time for other in (due, collection)
        ):
            return await _draft_step(
                deps, uow, caller, clock, draft, target, previous=previous, may_work=may_work
            )
        if collection is not None and (due is None or collection.due_time < due.due_time):
            if not may_work:
                raise domain.work_limit_reached(clock, target, deps.max_work_per_advance)
            moved, held = await _hold_collection(deps, uow, caller, clock, collection, target)
            collecting = collection if held else None
        else:
            return await _boundary_step(
                deps, uow, caller, clock, due, target, previous=previous, may_work=may_work
            )
    # The step's transaction is over: the gateway is called with none open.
    if collecting is not None:
        assert deps.collections is not None
        await deps.collections.collect(collecting.invoice_id, moved.frozen_time, caller=caller)
    return _Step(moved, [], (collection.due_time, collection.invoice_id))


async def _next_draft(
    deps: TestClockDeps, uow: TestClocksUnitOfWork, clock: TestClock, target: datetime
) -> DueSubscription | None:
    if deps.finalize_draft is None:
        return None
    return await uow.test_clocks.next_draft_due(clock.id, target)


async def _draft_step(
    deps: TestClockDeps,
    uow: TestClocksUnitOfWork,
    caller: Caller,
    clock: TestClock,
    draft: DueSubscription,
    target: datetime,
    *,
    previous: tuple[datetime, str] | None,
    may_work: bool,
) -> _Step:
    """A draft whose grace ends first (an earlier period's invoice before the next boundary) is
    finalized at that time, in the step's transaction."""
    assert deps.finalize_draft is not None
    if not may_work:
        raise domain.work_limit_reached(clock, target, deps.max_work_per_advance)
    if previous == (draft.due_time, draft.id):
        raise RuntimeError(f"invoice {draft.id} is still a draft at {draft.due_time} after its grace")
    at = max(draft.due_time, clock.frozen_time)
    moved = await _move(deps, uow, caller, clock, at, target)
    await deps.finalize_draft(uow, draft.id, at, caller=caller)
    await uow.commit()
    return _Step(moved, [], (draft.due_time, draft.id))


async def _boundary_step(
    deps: TestClockDeps,
    uow: TestClocksUnitOfWork,
    caller: Caller,
    clock: TestClock,
    due: DueSubscription | None,
    target: datetime,
    *,
    previous: tuple[datetime, str] | None,
    may_work: bool,
) -> _Step:
    """The subscription due first runs its work at its due time (or, when nothing is due by the
    target, the clock moves to the target), in the step's transaction."""
    if due is None:
        moved = await _move(deps, uow, caller, clock, target, target)
        await uow.commit()
        return _Step(moved, [], None)
    if not may_work:
        raise domain.work_limit_reached(clock, target, deps.max_work_per_advance)
    if previous == (due.due_time, due.id):
        # The work ran and left the subscription due when it was: running it again would loop.
        raise RuntimeError(f"subscription {due.id} is still due at {due.due_time} after its work ran")
    # A subscription due before the clock's time (it cannot go back) runs at the clock's time.
    at = max(due.due_time, clock.frozen_time)
    moved = await _move(deps, uow, caller, clock, at, target)
    done = [_reported(report) for report in await deps.run_due_work(uow, due.id, at, caller=caller)]
    await uow.commit()
    return _Step(moved, done, (due.due_time, due.id))


async def _next_collection(
    deps: TestClockDeps, uow: TestClocksUnitOfWork, clock: TestClock, target: datetime
) -> DueCollection | None:
    if deps.collections is None:
        return None
    return await deps.collections.next_due(uow, clock.id, target)


async def _hold_collection(
    deps: TestClockDeps,
    uow: TestClocksUnitOfWork,
    caller: Caller,
    clock: TestClock,
    collection: DueCollection,
    target: datetime,
) -> tuple[TestClock, bool]:
    """The clock moved to the collection's time and the invoice held for this advance, committed. The
    charge follows with no transaction open, and its outcome in a transaction of its own
    (billing_svc/collection.py). False when another advance holds the invoice."""
    assert deps.collections is not None
    at = max(collection.due_time, clock.frozen_time)
    moved = await _move(deps, uow, caller, clock, at, target)
    held = await deps.collections.claim(uow, collection.invoice_id)
    await uow.commit()
    return moved, held


def _reported(report: DoneWork) -> BillingWork:
    kind = str(report.kind)
    if kind not in domain.WORK_KINDS:
        # Checked before the commit: work the contract cannot report must not be done silently.
        raise RuntimeError(f"the subscriptions module reported work of an unknown kind {kind!r}")
    return BillingWork(
        kind, report.due_time, report.account_id, report.subscription_id, tuple(report.item_ids)
    )


async def _move(
    deps: TestClockDeps,
    uow: TestClocksUnitOfWork,
    caller: Caller,
    clock: TestClock,
    to: datetime,
    target: datetime,
) -> TestClock:
    """The clock at `to`, saved, audited and announced in this transaction; unchanged if it shows `to`.

    Every committed move is its own audit and outbox event, so a reader of either sees each time
    the clock stood at, including the intermediate ones of an advance that stopped half-way.
    """
    if to == clock.frozen_time:
        return clock
    moved = replace(clock, frozen_time=to, update_time=deps.clock.now(), revision=clock.revision + 1)
    await uow.test_clocks.save(moved)
    await audit(uow, caller, "advance", clock, moved)
    uow.emit(
        "test_clock.advanced",
        (domain.RESOURCE_TYPE, clock.id),
        {
            "id": clock.id,
            "from": clock.frozen_time.isoformat(),
            "to": to.isoformat(),
            "target": target.isoformat(),
        },
    )
    return moved

"""AdvanceTestClock through the real server, on each backend, with the subscriptions' work stood in
for by tests.integration.clock_support.FakeWork over subscription rows written directly.

Pinned here: the work runs in (due time, id) order across the clock's subscriptions and accounts,
each at its own due time, with the account's billing time reading that time in the same
transaction; other clocks and wall-clock accounts are untouched; an advance to where the clock
stands runs nothing; backwards and too far are refused; a failure half-way leaves the clock at the
last piece of work done, and the same advance again finishes; request ids replay; the work limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import grpc
import pytest

from app.server import App
from billing_svc.clocks.advance import advance_test_clock
from billing_svc.clocks.use_cases import TestClockDeps
from core.errors import FailedPrecondition
from core.principal import Caller, Principal, Role
from core.settings import Settings
from tally.billing.v1 import test_clock_pb2, test_clock_pb2_grpc
from tests.integration.clock_support import (
    T0,
    FakeWork,
    add_subscription,
    at,
    clock_app,
    clock_audit,
    clock_events,
    create_account,
    day,
    due_times,
    new_clock,
    ts,
)
from tests.support import details, failing, reason

pb = test_clock_pb2
Stub = test_clock_pb2_grpc.TestClockServiceStub


@pytest.fixture
def work() -> FakeWork:
    return FakeWork()


@pytest.fixture
async def app(settings: Settings, work: FakeWork) -> AsyncIterator[App]:
    async with clock_app(settings, work) as application:
        yield application


@pytest.fixture
def clocks(channel: grpc.aio.Channel) -> Stub:
    return test_clock_pb2_grpc.TestClockServiceStub(channel)


async def new_clock_with_accounts(
    clocks: Stub, channel: grpc.aio.Channel, first: int, n: int
) -> tuple[str, list[str]]:
    clock = await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock()))
    accounts = [await create_account(channel, first + k) for k in range(n)]
    for account_id in accounts:
        await clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id=account_id))
    return clock.id, accounts


async def advance(
    clocks: Stub, clock_id: str, to: datetime, request_id: str = ""
) -> pb.AdvanceTestClockResponse:
    return await clocks.AdvanceTestClock(
        pb.AdvanceTestClockRequest(id=clock_id, frozen_time=ts(to), request_id=request_id)
    )


def in_order(*runs: tuple[str, float]) -> list[tuple[str, datetime]]:
    """The contract's order: by due time, ties by subscription id."""
    return sorted(((sub, day(n)) for sub, n in runs), key=lambda run: (run[1], run[0]))


async def test_work_runs_in_time_order_across_subscriptions_and_accounts(
    app: App, channel: grpc.aio.Channel, clocks: Stub, work: FakeWork
) -> None:
    clock_id, (a, b) = await new_clock_with_accounts(clocks, channel, 0, 2)
    weekly = await add_subscription(app, a, clock_id, day(5), period_days=7)
    monthly = await add_subscription(app, a, clock_id, day(10), period_days=30)
    twenty = await add_subscription(app, b, clock_id, day(5), period_days=20)  # ties with weekly at day 5
    ending = await add_subscription(app, b, clock_id, day(40), cancel=True)  # ties at day 40 with two
    # Others' subscriptions, due on the way: a second clock's, and a wall-clock account's.
    other_clock, (c,) = await new_clock_with_accounts(clocks, channel, 10, 1)
    elsewhere = await add_subscription(app, c, other_clock, day(1))
    wall_account = await create_account(channel, 20)
    on_wall = await add_subscription(app, wall_account, None, day(1))

    response = await advance(clocks, clock_id, day(45))

    expected = in_order(
        *((weekly, n) for n in (5, 12, 19, 26, 33, 40)),
        *((twenty, n) for n in (5, 25, 45)),  # due exactly at the target: runs
        *((monthly, n) for n in (10, 40)),
        (ending, 40),
    )
    assert work.ran() == expected
    # Each ran at its own due time, and the account's billing time read that time, on this clock.
    assert all(call.account_now == call.now and call.test_clock_id == clock_id for call in work.calls)
    assert [(w.subscription_id, at(w.due_time)) for w in response.work] == expected
    kinds = {w.subscription_id: w.kind for w in response.work}
    assert kinds[ending] == pb.BillingWork.KIND_CANCELLATION and kinds[weekly] == pb.BillingWork.KIND_RENEWAL
    assert all(len(w.pending_invoice_item_ids) == 1 for w in response.work)
    assert at(response.test_clock.frozen_time) == day(45)
    assert await due_times(app) == {
        weekly: day(47),
        twenty: day(65),
        monthly: day(70),
        ending: None,
        elsewhere: day(1),
        on_wall: day(1),
    }
    other = await clocks.GetTestClock(pb.GetTestClockRequest(id=other_clock))
    assert at(other.frozen_time) == T0

    # Every committed move is audited and announced: one per distinct due time, then the target.
    stops = sorted({when for _, when in expected})
    events = [e for e in await clock_events(app, clock_id) if e.type == "test_clock.advanced"]
    assert [e.payload["to"] for e in events] == [when.isoformat() for when in stops]
    assert all(e.payload["target"] == day(45).isoformat() for e in events)
    moves = [changes for action, changes in await clock_audit(app, clock_id) if action == "advance"]
    assert sorted(m["frozen_time"]["after"] for m in moves) == [when.isoformat() for when in stops]


async def test_advancing_to_where_the_clock_stands_runs_nothing(
    app: App, channel: grpc.aio.Channel, clocks: Stub, work: FakeWork
) -> None:
    clock_id, (a,) = await new_clock_with_accounts(clocks, channel, 0, 1)
    await add_subscription(app, a, clock_id, day(3), period_days=30)
    first = await advance(clocks, clock_id, day(10))
    assert len(first.work) == 1
    audited = len(await clock_audit(app, clock_id))

    again = await advance(clocks, clock_id, day(10))
    assert list(again.work) == []
    assert again.test_clock == first.test_clock  # not even update_time moved
    assert len(work.calls) == 1 and len(await clock_audit(app, clock_id)) == audited

    # Nothing due on the way: one move, straight to the target.
    empty = await advance(clocks, clock_id, day(20))
    assert (list(empty.work), at(empty.test_clock.frozen_time), len(work.calls)) == ([], day(20), 1)


async def test_backwards_and_too_far_are_refused_and_change_nothing(
    app: App, channel: grpc.aio.Channel, clocks: Stub, work: FakeWork
) -> None:
    clock_id, (a,) = await new_clock_with_accounts(clocks, channel, 0, 1)
    await add_subscription(app, a, clock_id, day(1))
    await advance(clocks, clock_id, day(2))

    error = await failing(advance(clocks, clock_id, day(2) - timedelta(seconds=1)))
    assert (error.code(), reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "CLOCK_BACKWARDS")
    metadata = details(error).info.metadata
    assert (metadata["frozen_time"], metadata["target"]) == (
        day(2).isoformat(),
        (day(2) - timedelta(seconds=1)).isoformat(),
    )

    error = await failing(advance(clocks, clock_id, day(2 + 731) + timedelta(seconds=1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(error).violations) == {"frozen_time"}
    assert day(2).isoformat() in details(error).violations["frozen_time"]
    clock = await clocks.GetTestClock(pb.GetTestClockRequest(id=clock_id))
    assert at(clock.frozen_time) == day(2) and len(work.calls) == 1

    # Exactly two years (731 days) is allowed; the subscription renews every 30 days on the way.
    done = await advance(clocks, clock_id, day(2 + 731))
    assert [at(w.due_time) for w in done.work] == [day(1 + 30 * k) for k in range(1, 25)]


async def test_a_failure_half_way_leaves_a_consistent_clock_and_the_retry_finishes(
    app: App, channel: grpc.aio.Channel, clocks: Stub, work: FakeWork
) -> None:
    clock_id, (a, b) = await new_clock_with_accounts(clocks, channel, 0, 2)
    early = await add_subscription(app, a, clock_id, day(3), period_days=100)
    late = await add_subscription(app, b, clock_id, day(8), period_days=100)
    work.fail_at = 2  # the second piece of work: late's, at day 8

    error = await failing(advance(clocks, clock_id, day(30), request_id="advance-1"))
    assert (error.code(), reason(error)) == (grpc.StatusCode.UNAVAILABLE, "TEST_OUTAGE")
    stopped = await clocks.GetTestClock(pb.GetTestClockRequest(id=clock_id))
    assert at(stopped.frozen_time) == day(3)  # the first piece's due time: it committed
    assert await due_times(app) == {early: day(103), late: day(8)}  # the second rolled back

    work.fail_at = None
    retried = await advance(clocks, clock_id, day(30), request_id="advance-1")
    assert [(w.subscription_id, at(w.due_time)) for w in retried.work] == [(late, day(8))]
    assert at(retried.test_clock.frozen_time) == day(30)
    assert await due_times(app) == {early: day(103), late: day(108)}
    assert work.ran() == [(early, day(3)), (late, day(8)), (late, day(8))]  # the failed try, then the retry

    # Now complete, the request id replays without running anything.
    assert await advance(clocks, clock_id, day(30), request_id="advance-1") == retried
    assert len(work.calls) == 3


async def test_request_ids_replay_an_advance_and_refuse_another_target(
    app: App, channel: grpc.aio.Channel, clocks: Stub, work: FakeWork
) -> None:
    clock_id, (a,) = await new_clock_with_accounts(clocks, channel, 0, 1)
    await add_subscription(app, a, clock_id, day(4), period_days=10)
    first = await advance(clocks, clock_id, day(20), request_id="adv")
    assert len(first.work) == 2
    assert await advance(clocks, clock_id, day(20), request_id="adv") == first
    assert len(work.calls) == 2

    error = await failing(advance(clocks, clock_id, day(40), request_id="adv"))
    assert (error.code(), reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")
    clock = await clocks.GetTestClock(pb.GetTestClockRequest(id=clock_id))
    assert at(clock.frozen_time) == day(20) and len(work.calls) == 2  # refused before anything moved


async def test_concurrent_advances_run_each_piece_of_work_once(
    app: App, channel: grpc.aio.Channel, clocks: Stub, work: FakeWork
) -> None:
    clock_id, accounts = await new_clock_with_accounts(clocks, channel, 0, 3)
    for n, account_id in enumerate(accounts):
        await add_subscription(app, account_id, clock_id, day(1 + n), period_days=5)
    answers = await asyncio.gather(*(advance(clocks, clock_id, day(30)) for _ in range(3)))

    assert len(work.ran()) == len(set(work.ran())) == 18  # 6 renewals each, none twice
    assert work.ran() == sorted(work.ran(), key=lambda run: (run[1], run[0]))
    reported = sorted((w.subscription_id, at(w.due_time)) for answer in answers for w in answer.work)
    assert reported == sorted(work.ran())  # the calls shared the work between them
    assert {at(answer.test_clock.frozen_time) for answer in answers} == {day(30)}


async def test_one_call_runs_a_bounded_number_of_pieces(
    app: App, channel: grpc.aio.Channel, clocks: Stub, work: FakeWork
) -> None:
    """Through the use case with a small limit (the server's is MAX_WORK_PER_ADVANCE, 10,000)."""
    clock_id, (a,) = await new_clock_with_accounts(clocks, channel, 0, 1)
    subscription = await add_subscription(app, a, clock_id, day(1), period_days=1)
    served: TestClockDeps = app.components.services["billing"].test_clocks
    deps = TestClockDeps(
        new_uow=served.new_uow,
        new_reader=served.new_reader,
        clock=served.clock,
        page_tokens=served.page_tokens,
        run_due_work=work,
        max_work_per_advance=3,
    )
    admin = Caller(Principal("usr_admin", Role.ADMIN, frozenset({"*"})), "/test/AdvanceTestClock")

    with pytest.raises(FailedPrecondition) as caught:
        await advance_test_clock(deps, admin, clock_id, day(5))
    assert caught.value.reason == "ADVANCE_WORK_LIMIT"
    assert caught.value.metadata["frozen_time"] == day(3).isoformat()
    assert work.ran() == [(subscription, day(n)) for n in (1, 2, 3)]

    finished = await advance_test_clock(deps, admin, clock_id, day(5))  # the same call goes on
    assert [w.due_time for w in finished.work] == [day(4), day(5)]
    assert finished.clock.frozen_time == day(5)


async def test_work_that_leaves_its_subscription_due_is_not_run_forever(
    app: App, channel: grpc.aio.Channel, clocks: Stub, work: FakeWork
) -> None:
    clock_id, (a,) = await new_clock_with_accounts(clocks, channel, 0, 1)
    stuck = await add_subscription(app, a, clock_id, day(1), period_days=0)  # its "renewal" stays due
    error = await failing(advance(clocks, clock_id, day(9)))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert work.ran() == [(stuck, day(1))]  # found due again at once: refused, not run again
    clock = await clocks.GetTestClock(pb.GetTestClockRequest(id=clock_id))
    assert at(clock.frozen_time) == day(1)

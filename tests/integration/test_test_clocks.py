"""TestClockService through the real server, on each backend: create, get, list, attach, delete,
their errors, request ids, audit and outbox; and the REST face. Advancing is in test_clock_advance.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import text

from app.server import App
from billing_svc.clocks import domain
from billing_svc.clocks.sql_unit_of_work import SqlTestClocksUnitOfWork
from billing_svc.clocks.tables import TestClockAccountRow
from billing_svc.subscriptions.tables import PendingInvoiceItemRow, SubscriptionPhaseRow, SubscriptionRow
from core.settings import Settings
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import test_clock_pb2, test_clock_pb2_grpc
from tests.integration.clock_support import (
    T0,
    WALL,
    FakeWork,
    add_subscription,
    at,
    clock_app,
    clock_audit,
    clock_events,
    count,
    create_account,
    day,
    due_times,
    new_clock,
    ts,
)
from tests.integration.test_gateway import Gateway, bearer, call, detail
from tests.support import details, eventually, failing, mint, reason

pb = test_clock_pb2


@pytest.fixture
def work() -> FakeWork:
    return FakeWork()


@pytest.fixture
async def app(settings: Settings, work: FakeWork) -> AsyncIterator[App]:
    async with clock_app(settings, work) as application:
        yield application


@pytest.fixture
def clocks(channel: grpc.aio.Channel) -> test_clock_pb2_grpc.TestClockServiceStub:
    return test_clock_pb2_grpc.TestClockServiceStub(channel)


async def test_create_get_and_list(clocks: test_clock_pb2_grpc.TestClockServiceStub) -> None:
    created = await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock("Annual plans")))
    assert created.id.startswith("clk_")
    assert (created.display_name, at(created.frozen_time)) == ("Annual plans", T0)
    # Record times are the wall clock's, not the simulated time.
    assert at(created.create_time) == at(created.update_time) == WALL
    assert list(created.account_ids) == []
    assert await clocks.GetTestClock(pb.GetTestClockRequest(id=created.id)) == created

    others = [
        await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock(f"c{n}", day(n))))
        for n in range(2)
    ]
    first = await clocks.ListTestClocks(pb.ListTestClocksRequest(page_size=2))
    rest = await clocks.ListTestClocks(
        pb.ListTestClocksRequest(page_size=2, page_token=first.next_page_token)
    )
    listed = [clock.id for clock in [*first.test_clocks, *rest.test_clocks]]
    # One wall time for all three: the listing is in (create_time, id) order, so by id here.
    assert listed == sorted([created.id, *(clock.id for clock in others)])
    assert rest.next_page_token == ""


async def test_bad_input_names_the_field(clocks: test_clock_pb2_grpc.TestClockServiceStub) -> None:
    error = await failing(
        clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=pb.TestClock(display_name="x" * 201)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(error).violations) == {"test_clock.display_name", "test_clock.frozen_time"}

    # Past the Timestamp range: refused by field, not an internal error.
    out_of_range = pb.TestClock(frozen_time=timestamp_pb2.Timestamp(seconds=253_402_300_800))
    error = await failing(clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=out_of_range)))
    assert set(details(error).violations) == {"test_clock.frozen_time"}

    error = await failing(clocks.GetTestClock(pb.GetTestClockRequest(id="")))
    assert set(details(error).violations) == {"id"}
    error = await failing(clocks.GetTestClock(pb.GetTestClockRequest(id="clk_nosuchclock")))
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "TEST_CLOCK_NOT_FOUND")
    error = await failing(clocks.AdvanceTestClock(pb.AdvanceTestClockRequest(id="clk_nosuchclock")))
    assert set(details(error).violations) == {"frozen_time"}


async def test_attach_account_and_its_refusals(
    app: App, channel: grpc.aio.Channel, clocks: test_clock_pb2_grpc.TestClockServiceStub
) -> None:
    clock = await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock()))
    other = await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock("other")))
    first, second, billed, deleted = [await create_account(channel, n) for n in range(4)]

    attached = await clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id=first))
    assert list(attached.account_ids) == [first]
    attached = await clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id=second))
    assert list(attached.account_ids) == sorted([first, second])
    assert (await clocks.GetTestClock(pb.GetTestClockRequest(id=clock.id))).account_ids == sorted(
        [first, second]
    )

    for clock_id in (clock.id, other.id):
        error = await failing(clocks.AttachAccount(pb.AttachAccountRequest(id=clock_id, account_id=first)))
        assert (error.code(), reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_ON_TEST_CLOCK")
        assert details(error).info.metadata["test_clock_id"] == clock.id

    await add_subscription(app, billed, None, day(3))
    error = await failing(clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id=billed)))
    assert (error.code(), reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_HAS_BILLING")

    accounts = account_pb2_grpc.AccountServiceStub(channel)
    await accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=deleted))
    error = await failing(clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id=deleted)))
    assert reason(error) == "ACCOUNT_DELETED"
    error = await failing(
        clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id="acct_nobody"))
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    error = await failing(clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id)))
    assert set(details(error).violations) == {"account_id"}
    error = await failing(
        clocks.AttachAccount(pb.AttachAccountRequest(id="clk_nosuchclock", account_id=billed))
    )
    assert reason(error) == "TEST_CLOCK_NOT_FOUND"

    # The refusals wrote nothing: two attachments, audited and announced once each.
    assert await count(app, TestClockAccountRow) == 2
    actions = [action for action, _ in await clock_audit(app, clock.id)]
    assert actions == ["attach_account", "attach_account", "create"]
    events = await clock_events(app, clock.id)
    assert [(e.type, e.payload.get("account_id")) for e in events] == [
        ("test_clock.created", None),
        ("test_clock.account_attached", first),
        ("test_clock.account_attached", second),  # in commit order
    ]


async def test_a_clock_takes_a_bounded_number_of_accounts(
    channel: grpc.aio.Channel,
    clocks: test_clock_pb2_grpc.TestClockServiceStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(domain, "MAX_ACCOUNTS", 2)
    clock = await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock()))
    for n in range(2):
        account_id = await create_account(channel, n)
        await clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id=account_id))
    error = await failing(
        clocks.AttachAccount(
            pb.AttachAccountRequest(id=clock.id, account_id=await create_account(channel, 9))
        )
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "TEST_CLOCK_FULL")


async def test_request_ids_replay_and_refuse_a_different_request(
    app: App, channel: grpc.aio.Channel, clocks: test_clock_pb2_grpc.TestClockServiceStub
) -> None:
    request = pb.CreateTestClockRequest(test_clock=new_clock("Once"), request_id="create-1")
    created = await clocks.CreateTestClock(request)
    assert await clocks.CreateTestClock(request) == created
    changed = pb.CreateTestClockRequest(test_clock=new_clock("Twice"), request_id="create-1")
    error = await failing(clocks.CreateTestClock(changed))
    assert (error.code(), reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")

    account_id = await create_account(channel, 1)
    attach = pb.AttachAccountRequest(id=created.id, account_id=account_id, request_id="attach-1")
    attached = await clocks.AttachAccount(attach)
    # A replay answers as the first call did, where a new attach would be refused.
    assert await clocks.AttachAccount(attach) == attached

    delete = pb.DeleteTestClockRequest(id=created.id, request_id="delete-1")
    deleted = await clocks.DeleteTestClock(delete)
    assert list(deleted.account_ids) == [account_id]
    assert await clocks.DeleteTestClock(delete) == deleted

    listing = await clocks.ListTestClocks(pb.ListTestClocksRequest())
    assert list(listing.test_clocks) == []
    actions = sorted(action for action, _ in await clock_audit(app, created.id))
    assert actions == ["attach_account", "create", "delete"]


async def test_delete_takes_the_accounts_billing_data_and_nothing_else(
    app: App, channel: grpc.aio.Channel, clocks: test_clock_pb2_grpc.TestClockServiceStub, work: FakeWork
) -> None:
    clock = await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock()))
    kept_clock = await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock("kept")))
    first, second, elsewhere, wall = [await create_account(channel, n) for n in range(4)]
    for clock_id, account_id in ((clock.id, first), (clock.id, second), (kept_clock.id, elsewhere)):
        await clocks.AttachAccount(pb.AttachAccountRequest(id=clock_id, account_id=account_id))
    gone = [
        await add_subscription(app, first, clock.id, day(1)),
        await add_subscription(app, first, clock.id, day(2)),
        await add_subscription(app, second, clock.id, day(3)),
    ]
    kept = [
        await add_subscription(app, elsewhere, kept_clock.id, day(1)),
        await add_subscription(app, wall, None, day(1)),
    ]
    await clocks.AdvanceTestClock(pb.AdvanceTestClockRequest(id=clock.id, frozen_time=ts(day(2))))
    assert work.ran() == [(gone[0], day(1)), (gone[1], day(2))]
    assert await count(app, PendingInvoiceItemRow) == 2

    deleted = await clocks.DeleteTestClock(pb.DeleteTestClockRequest(id=clock.id))
    assert sorted(deleted.account_ids) == sorted([first, second])
    assert set(await due_times(app)) == set(kept)
    for account_id in (first, second):
        for model in (SubscriptionRow, SubscriptionPhaseRow, PendingInvoiceItemRow):
            assert await count(app, model, account_id=account_id) == 0
    assert await count(app, SubscriptionPhaseRow) == 2
    assert await count(app, TestClockAccountRow) == 1
    error = await failing(clocks.GetTestClock(pb.GetTestClockRequest(id=clock.id)))
    assert reason(error) == "TEST_CLOCK_NOT_FOUND"
    assert (await clocks.GetTestClock(pb.GetTestClockRequest(id=kept_clock.id))).account_ids == [elsewhere]

    # Back on the wall clock, and free to be attached again.
    async with SqlTestClocksUnitOfWork(
        app.components.platform.readers,
        wall_clock=app.components.clock,
        account_directory=app.components.platform.account_directory,
    ) as uow:
        back = await uow.clocks.time_for(first)
    assert (back.now, back.test_clock_id) == (WALL, None)
    await clocks.AttachAccount(pb.AttachAccountRequest(id=kept_clock.id, account_id=first))

    events = await clock_events(app, clock.id)
    assert events[-1].type == "test_clock.deleted"
    assert sorted(events[-1].payload["account_ids"]) == sorted([first, second])
    (changes,) = [changes for action, changes in await clock_audit(app, clock.id) if action == "delete"]
    assert changes["frozen_time"]["before"] == day(2).isoformat() and changes["frozen_time"]["after"] is None


@pytest.mark.postgres
async def test_attach_waits_for_a_subscription_being_created(
    postgres_settings: Settings, postgres_clean: None
) -> None:
    """A subscription's creation holds a share lock on its account (core.accounts); an attach locks
    the account for update, so it waits, then sees the subscription and refuses."""
    from tests.support import channel_as

    async with clock_app(postgres_settings, FakeWork()) as app, channel_as(app, mint(app)) as channel:
        clocks = test_clock_pb2_grpc.TestClockServiceStub(channel)
        clock = await clocks.CreateTestClock(pb.CreateTestClockRequest(test_clock=new_clock()))
        account_id = await create_account(channel, 1)
        platform = app.components.platform
        async with platform.writers() as creating:
            terms = await platform.account_directory(creating).terms(account_id, lock=True)
            assert terms is not None and terms.live
            attach = asyncio.ensure_future(
                clocks.AttachAccount(pb.AttachAccountRequest(id=clock.id, account_id=account_id))
            )

            async def attach_waits() -> bool:
                async with platform.readers() as session:
                    waiting = await session.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND datname = current_database()"
                        )
                    )
                    return int(waiting.scalar_one()) > 0

            await eventually(attach_waits, what="the attach to wait on the account's lock")
            assert not attach.done()
            await add_subscription_in(creating, account_id)
            await creating.commit()
        error = await failing(attach)
        assert reason(error) == "ACCOUNT_HAS_BILLING"
        assert await count(app, TestClockAccountRow) == 0


async def add_subscription_in(session: object, account_id: str) -> None:
    """Insert a bare subscription row on an open session (the creation the attach waits for)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    assert isinstance(session, AsyncSession)
    await session.execute(
        text(
            "INSERT INTO subscriptions (id, account_id, plan_id, plan_version, quantity, state,"
            " billing_time_zone, anchor_date, start_time, period_index, current_period_start,"
            " current_period_end, cancel_at_period_end, metadata, create_time, update_time, revision)"
            " VALUES ('sub_racing', :account, 'plan_x', 1, 1, 'active', 'UTC', '2027-01-01', :t, 0, :t, :t,"
            " false, '{}', :t, :t, 1)"
        ),
        {"account": account_id, "t": T0},
    )


# --- REST ----------------------------------------------------------------------------------------


@pytest.fixture
async def http(app: App) -> AsyncIterator[aiohttp.ClientSession]:
    async with Gateway(app) as session:
        yield session


async def test_every_method_over_rest(app: App, http: aiohttp.ClientSession, work: FakeWork) -> None:
    admin = bearer(mint(app))
    body = {"displayName": "Over REST", "frozenTime": "2027-01-01T00:00:00Z"}
    created, _ = await call(http, "POST", "/v1/testClocks", 200, json=body, headers=admin)
    clock_id = created["id"]
    assert created["frozenTime"] == "2027-01-01T00:00:00Z" and created["createTime"] == "2026-12-01T09:30:00Z"
    got, _ = await call(http, "GET", f"/v1/testClocks/{clock_id}", 200, headers=admin)
    assert got == created
    listing, _ = await call(http, "GET", "/v1/testClocks?pageSize=5", 200, headers=admin)
    assert [clock["id"] for clock in listing["testClocks"]] == [clock_id]

    accounts = {"displayName": "Rest", "email": "rest-clock@example.test", "currencyCode": "USD"}
    account, _ = await call(http, "POST", "/v1/accounts", 200, json=accounts, headers=admin)
    attached, _ = await call(
        http,
        "POST",
        f"/v1/testClocks/{clock_id}:attachAccount",
        200,
        json={"accountId": account["id"]},
        headers=admin,
    )
    assert attached["accountIds"] == [account["id"]]
    subscription_id = await add_subscription(app, account["id"], clock_id, day(10), period_days=30)

    keyed = {**admin, "Idempotency-Key": "advance-rest-1"}
    target = {"frozenTime": "2027-03-01T00:00:00Z"}
    advanced, _ = await call(
        http, "POST", f"/v1/testClocks/{clock_id}:advance", 200, json=target, headers=keyed
    )
    assert advanced["testClock"]["frozenTime"] == "2027-03-01T00:00:00Z"
    assert [(w["kind"], w["dueTime"], w["subscriptionId"]) for w in advanced["work"]] == [
        ("KIND_RENEWAL", "2027-01-11T00:00:00Z", subscription_id),
        ("KIND_RENEWAL", "2027-02-10T00:00:00Z", subscription_id),
    ]
    replayed, _ = await call(
        http, "POST", f"/v1/testClocks/{clock_id}:advance", 200, json=target, headers=keyed
    )
    assert replayed == advanced and len(work.calls) == 2

    backwards, _ = await call(
        http,
        "POST",
        f"/v1/testClocks/{clock_id}:advance",
        409,
        json={"frozenTime": "2027-02-01T00:00:00Z"},
        headers=admin,
    )
    assert detail(backwards, "ErrorInfo")["reason"] == "CLOCK_BACKWARDS"
    missing, _ = await call(http, "GET", "/v1/testClocks/clk_nosuchclock", 404, headers=admin)
    assert detail(missing, "ErrorInfo")["reason"] == "TEST_CLOCK_NOT_FOUND"

    deleted, _ = await call(http, "DELETE", f"/v1/testClocks/{clock_id}", 200, headers=admin)
    assert deleted["accountIds"] == [account["id"]]
    await call(http, "GET", f"/v1/testClocks/{clock_id}", 404, headers=admin)

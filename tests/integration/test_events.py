"""EventService on SQLite and PostgreSQL: the outbox listed and watched, over gRPC and REST (SSE).

A watch with a deadline ends cleanly (OK) just before it, after a heartbeat with its cursor: the
tests read whole watches that way, so "nothing more was sent" is checked, not waited for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy.exc import IntegrityError

from app.server import App, build
from core.db import UnitOfWork
from core.idempotency import IdempotencyKeyRow
from core.principal import Role
from core.settings import Settings
from tally.billing.v1 import event_pb2, invoice_pb2, invoice_pb2_grpc
from tally.billing.v1.event_pb2_grpc import EventServiceStub
from tests.billing_support import new_account
from tests.support import channel_as, cheap_passwords, details, failing, mint, serving

Start = event_pb2.WatchEventsRequest.Start
WATCH_SECONDS = 1.0  # a watch read to its end runs this long (its deadline)


@pytest.fixture
def events_settings(settings: Settings) -> Settings:
    # A short poll, so live events arrive at once; the heartbeat well past a test's watches.
    return settings.model_copy(
        update={"events_watch_poll_seconds": 0.02, "events_watch_heartbeat_seconds": 30.0}
    )


@pytest.fixture
async def app(events_settings: Settings) -> AsyncIterator[App]:
    async with serving(events_settings) as application:
        yield application


@pytest.fixture
async def admin(app: App) -> AsyncIterator[EventServiceStub]:
    async with channel_as(app, mint(app)) as channel:
        yield EventServiceStub(channel)


async def emit(app: App, *events: tuple[str, str, str]) -> None:
    """(type, resource id, account id or "") each, in one transaction: their order is commit order."""
    async with UnitOfWork(app.components.platform.writers) as uow:
        for event_type, resource_id, account_id in events:
            payload = {"id": resource_id, **({"account_id": account_id} if account_id else {})}
            uow.emit(event_type, (event_type.split(".")[0], resource_id), payload)
        await uow.commit()


def kinds(messages: Sequence[event_pb2.WatchEventsResponse]) -> list[str]:
    """Each message as `type/resource id`, or `-` for a heartbeat."""
    return [f"{m.event.type}/{m.event.resource_id}" if m.HasField("event") else "-" for m in messages]


async def watch_all(stub: EventServiceStub, **fields: Any) -> list[event_pb2.WatchEventsResponse]:
    """Every message of a watch with a short deadline, which ends it with OK."""
    call = stub.WatchEvents(event_pb2.WatchEventsRequest(**fields), timeout=WATCH_SECONDS)
    messages = [message async for message in call]
    assert await call.code() == grpc.StatusCode.OK
    return messages


def position(cursor: str) -> int:
    return int(cursor.removeprefix("c"))


async def test_backlog_then_live_events_in_commit_order(app: App, admin: EventServiceStub) -> None:
    await emit(app, ("invoice.created", "inv_1", "acct_a"), ("invoice.finalized", "inv_1", "acct_a"))
    await emit(app, ("plan.created", "plan_1", ""))
    call = admin.WatchEvents(event_pb2.WatchEventsRequest(start=Start.START_OLDEST))
    opening = await call.read()
    assert not opening.HasField("event") and opening.cursor == "c0"  # before the oldest event
    backlog = [await call.read() for _ in range(3)]
    assert kinds(backlog) == ["invoice.created/inv_1", "invoice.finalized/inv_1", "plan.created/plan_1"]
    await emit(app, ("subscription.created", "sub_1", "acct_a"))
    await emit(app, ("subscription.updated", "sub_1", "acct_a"))
    live = [await call.read() for _ in range(2)]
    assert kinds(live) == ["subscription.created/sub_1", "subscription.updated/sub_1"]
    positions = [position(m.cursor) for m in backlog + live]
    assert positions == sorted(positions) and len(set(positions)) == 5
    first = backlog[0].event
    assert first.account_id == "acct_a" and first.resource_type == "invoice" and first.id.startswith("oev_")
    assert dict(first.payload) == {"id": "inv_1", "account_id": "acct_a"}
    assert first.create_time.seconds > 0
    assert backlog[2].event.account_id == ""
    call.cancel()


async def test_reconnecting_with_the_cursor_misses_nothing_and_repeats_nothing(
    app: App, admin: EventServiceStub
) -> None:
    await emit(app, *[("invoice.created", f"inv_{n}", "acct_a") for n in range(1, 5)])
    call = admin.WatchEvents(event_pb2.WatchEventsRequest(start=Start.START_OLDEST))
    await call.read()  # the opening heartbeat
    got = [await call.read() for _ in range(2)]
    call.cancel()  # the client goes away mid-backlog
    await emit(app, ("invoice.created", "inv_5", "acct_a"))
    await emit(app, ("invoice.created", "inv_6", "acct_a"), ("invoice.created", "inv_7", "acct_a"))
    resumed = await watch_all(admin, cursor=got[-1].cursor)
    events = [m for m in resumed if m.HasField("event")]
    assert kinds(got + events) == [f"invoice.created/inv_{n}" for n in range(1, 8)]
    assert resumed[-1].cursor == events[-1].cursor  # the closing heartbeat
    # From the last cursor: nothing again.
    assert kinds(await watch_all(admin, cursor=resumed[-1].cursor)) == ["-", "-"]


async def test_without_a_cursor_a_watch_starts_now(app: App, admin: EventServiceStub) -> None:
    await emit(app, ("invoice.created", "inv_old", "acct_a"))
    call = admin.WatchEvents(event_pb2.WatchEventsRequest())
    opening = await call.read()
    await emit(app, ("invoice.created", "inv_new", "acct_a"))
    assert kinds([await call.read()]) == ["invoice.created/inv_new"]
    call.cancel()
    assert position(opening.cursor) > 0


async def test_filters_and_the_heartbeat_moves_past_what_they_leave_out(
    app: App, admin: EventServiceStub
) -> None:
    await emit(
        app,
        ("invoice.created", "inv_1", "acct_a"),
        ("invoice.paid", "inv_1", "acct_a"),
        ("credit_note.created", "cn_1", "acct_a"),
        ("subscription.created", "sub_1", "acct_b"),
        ("plan.created", "plan_1", ""),
    )
    oldest = {"start": Start.START_OLDEST}
    by_prefix = await watch_all(admin, event_types=["invoice.", "plan.created"], **oldest)
    assert kinds(by_prefix) == [
        "-",
        "invoice.created/inv_1",
        "invoice.paid/inv_1",
        "plan.created/plan_1",
        "-",
    ]
    exact = await watch_all(admin, event_types=["invoice.paid"], **oldest)
    assert kinds(exact) == ["-", "invoice.paid/inv_1", "-"]
    # The closing heartbeat is past the filtered-out events that came after the last match.
    newest = position(by_prefix[-1].cursor)
    assert position(exact[-1].cursor) == newest
    assert kinds(await watch_all(admin, resource_type="credit_note", **oldest))[1:-1] == [
        "credit_note.created/cn_1"
    ]
    assert kinds(await watch_all(admin, resource_id="inv_1", **oldest))[1:-1] == [
        "invoice.created/inv_1",
        "invoice.paid/inv_1",
    ]
    assert kinds(await watch_all(admin, account_id="acct_b", **oldest))[1:-1] == [
        "subscription.created/sub_1"
    ]
    listed = await admin.ListEvents(
        event_pb2.ListEventsRequest(event_types=["invoice."], account_id="acct_a")
    )
    assert [e.type for e in listed.events] == ["invoice.created", "invoice.paid"]


async def test_customers_see_only_their_own_accounts_events(app: App) -> None:
    async with channel_as(app, mint(app)) as channel:
        a, b = await new_account(channel, 1), await new_account(channel, 2)
        # A real change's event too: an invoice of A.
        invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
        line = {"description": "Setup", "unitPrice": {"value": "10"}}
        invoice = await invoices.CreateInvoice(
            json_format.ParseDict({"accountId": a.id, "lines": [line]}, invoice_pb2.CreateInvoiceRequest())
        )
    await emit(
        app,
        ("subscription.created", "sub_b", b.id),
        ("plan.created", "plan_1", ""),
        ("meter.created", "m", ""),
    )
    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=a.id)) as channel:
        customer = EventServiceStub(channel)
        seen = await watch_all(customer, start=Start.START_OLDEST)
        assert kinds(seen)[1:-1] == [f"invoice.created/{invoice.id}"]
        assert seen[1].event.account_id == a.id
        assert seen[1].event.payload["total_minor"] == 1000  # $10.00, exact in a double
        listed = await customer.ListEvents(event_pb2.ListEventsRequest())
        assert [e.resource_id for e in listed.events] == [invoice.id]
        own = await customer.ListEvents(event_pb2.ListEventsRequest(account_id=a.id))
        assert [e.resource_id for e in own.events] == [invoice.id]
        for call in (
            customer.ListEvents(event_pb2.ListEventsRequest(account_id=b.id)),
            customer.WatchEvents(event_pb2.WatchEventsRequest(account_id=b.id)).read(),
        ):
            error = await failing(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_cursors_and_starts_are_invalid_arguments(app: App, admin: EventServiceStub) -> None:
    await emit(app, ("plan.created", "plan_1", ""))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cursor": "nope"}, "cursor"),
        ({"cursor": "c-1"}, "cursor"),
        ({"cursor": "c01"}, "cursor"),
        ({"cursor": "c99999999"}, "cursor"),  # ahead of every event
        ({"cursor": "c0", "start": Start.START_OLDEST}, "start"),
        ({"start": 7}, "start"),
        ({"event_types": [""]}, "event_types[0]"),
        ({"event_types": ["invoice."] * 51}, "event_types"),
    ]
    for fields, field in cases:
        error = await failing(admin.WatchEvents(event_pb2.WatchEventsRequest(**fields)).read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert field in details(error).violations, (fields, details(error).violations)


async def test_list_events_pages_oldest_first(app: App, admin: EventServiceStub) -> None:
    await emit(app, *[("invoice.created", f"inv_{n}", "acct_a") for n in range(7)])
    await emit(app, ("plan.created", "plan_1", ""))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await admin.ListEvents(
            event_pb2.ListEventsRequest(page_size=3, page_token=token, event_types=["invoice."])
        )
        seen += [e.resource_id for e in page.events]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"inv_{n}" for n in range(7)] and pages == 3
    everything = await admin.ListEvents(event_pb2.ListEventsRequest())
    assert [e.type for e in everything.events][-1] == "plan.created" and not everything.next_page_token
    first = await admin.ListEvents(event_pb2.ListEventsRequest(page_size=3, event_types=["invoice."]))
    for request in (
        event_pb2.ListEventsRequest(page_token="garbage"),
        # A token is bound to its filter.
        event_pb2.ListEventsRequest(page_token=first.next_page_token, event_types=["plan."]),
    ):
        error = await failing(admin.ListEvents(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in details(error).violations
    error = await failing(admin.ListEvents(event_pb2.ListEventsRequest(page_size=-1)))
    assert "page_size" in details(error).violations


async def test_sse_through_the_gateway_resumes_from_the_cursor(app: App) -> None:
    await emit(app, ("invoice.created", "inv_1", "acct_a"), ("invoice.paid", "inv_1", "acct_a"))
    headers = {
        "Authorization": f"Bearer {mint(app)}",
        "Accept": "text/event-stream",
        "Grpc-Timeout": f"{int(WATCH_SECONDS * 1000)}m",
    }
    base = f"http://127.0.0.1:{app.http_port}/v1/events:watch"

    async def sse(http: aiohttp.ClientSession, params: dict[str, str]) -> list[dict[str, Any]]:
        async with http.get(base, params=params, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = await response.text()
        lines = [line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")]
        frames = [json.loads(line) for line in lines]
        assert all("result" in frame for frame in frames), frames  # no error frame
        return [frame["result"] for frame in frames]

    async with aiohttp.ClientSession() as http:
        first = await sse(http, {"start": "START_OLDEST", "eventTypes": "invoice."})
        assert [m.get("event", {}).get("type") for m in first] == [
            None,
            "invoice.created",
            "invoice.paid",
            None,
        ]
        assert first[1]["event"]["payload"] == {"id": "inv_1", "account_id": "acct_a"}
        assert first[1]["event"]["accountId"] == "acct_a"
        await emit(app, ("invoice.voided", "inv_1", "acct_a"))
        again = await sse(http, {"cursor": first[1]["cursor"]})
        assert [m.get("event", {}).get("type") for m in again] == [
            None,
            "invoice.paid",
            "invoice.voided",
            None,
        ]
        async with http.get(
            f"http://127.0.0.1:{app.http_port}/v1/events",
            params={"pageSize": "1"},
            headers={"Authorization": headers["Authorization"]},
        ) as response:
            listed = await response.json()
        assert [e["type"] for e in listed["events"]] == ["invoice.created"] and listed["nextPageToken"]
        async with http.get(base, params={"cursor": "bad"}, headers=headers) as response:
            assert response.status == 400
            body = await response.json()
        assert body["details"][-1]["fieldViolations"][0]["field"] == "cursor"


async def test_a_watch_ends_cleanly_when_the_server_stops(events_settings: Settings) -> None:
    app = await build(events_settings, passwords=cheap_passwords())
    await app.start()
    stopped = False
    try:
        async with channel_as(app, mint(app)) as channel:
            call = EventServiceStub(channel).WatchEvents(event_pb2.WatchEventsRequest())
            await call.read()
            # With a long grace, a watch that did not end by itself would hold the stop for it all.
            await asyncio.wait_for(app.stop(grace=30), timeout=10)
            stopped = True
            assert kinds([message async for message in call]) == ["-"]  # the closing heartbeat
            assert await call.code() == grpc.StatusCode.OK
    finally:
        if not stopped:
            await app.stop(grace=0)


@pytest.fixture
async def slow_poll_app(events_settings: Settings) -> AsyncIterator[App]:
    """A server whose watches poll once an hour, so only the in-process wake-up brings events in a
    test's time; a heartbeat after every empty look, which tells a test the watch is caught up.
    (model_copy does not validate: the setting's own bounds are for operators.)"""
    settings = events_settings.model_copy(
        update={"events_watch_poll_seconds": 3600.0, "events_watch_heartbeat_seconds": 0.0}
    )
    async with serving(settings) as application:
        yield application


async def caught_up(call: Any) -> event_pb2.WatchEventsResponse:
    """The first message of a watch with no backlog is its opening, the second the heartbeat after
    its first empty look: from then on it waits, and a commit must wake it."""
    opening = await asyncio.wait_for(call.read(), 10)
    heartbeat = await asyncio.wait_for(call.read(), 10)
    assert not opening.HasField("event") and not heartbeat.HasField("event")
    assert heartbeat.cursor == opening.cursor
    return heartbeat


async def next_event(call: Any) -> event_pb2.WatchEventsResponse:
    """The next message with an event (skipping heartbeats), within 10 s, or the test fails."""

    async def read() -> event_pb2.WatchEventsResponse:
        while True:
            message = await call.read()
            if message.HasField("event"):
                return message

    return await asyncio.wait_for(read(), 10)


async def test_a_commit_in_this_process_wakes_a_caught_up_watch_at_once(slow_poll_app: App) -> None:
    async with channel_as(slow_poll_app, mint(slow_poll_app)) as channel:
        call = EventServiceStub(channel).WatchEvents(event_pb2.WatchEventsRequest())
        await caught_up(call)
        await emit(slow_poll_app, ("invoice.created", "inv_1", "acct_a"))
        assert kinds([await next_event(call)]) == ["invoice.created/inv_1"]
        await emit(slow_poll_app, ("invoice.paid", "inv_1", "acct_a"), ("plan.created", "plan_1", ""))
        got = [await next_event(call), await next_event(call)]
        assert kinds(got) == ["invoice.paid/inv_1", "plan.created/plan_1"]
        call.cancel()


async def test_a_rolled_back_write_wakes_nobody_and_sends_nothing(slow_poll_app: App) -> None:
    signal = slow_poll_app.components.platform.outbox_commits
    async with channel_as(slow_poll_app, mint(slow_poll_app)) as channel:
        call = EventServiceStub(channel).WatchEvents(event_pb2.WatchEventsRequest())
        await caught_up(call)
        writers = slow_poll_app.components.platform.writers
        async with UnitOfWork(writers) as uow:
            uow.session.add(_key_row("dup"))
            await uow.commit()
        waiting = signal.next_commit()
        # The event row is written (commit() writes events first), then the commit fails on a
        # duplicate key: the transaction rolls back with its event.
        with pytest.raises(IntegrityError):
            async with UnitOfWork(writers) as uow:
                uow.session.add(_key_row("dup"))
                uow.emit("invoice.created", ("invoice", "inv_phantom"), {"account_id": "acct_a"})
                await uow.commit()
        assert not waiting.is_set() and signal.next_commit() is waiting  # nobody was told
        await emit(slow_poll_app, ("invoice.created", "inv_real", "acct_a"))
        first = await next_event(call)
        await emit(slow_poll_app, ("invoice.paid", "inv_real", "acct_a"))
        second = await next_event(call)
        assert kinds([first, second]) == ["invoice.created/inv_real", "invoice.paid/inv_real"]
        call.cancel()
    async with channel_as(slow_poll_app, mint(slow_poll_app)) as channel:
        listed = await EventServiceStub(channel).ListEvents(event_pb2.ListEventsRequest())
    assert [e.resource_id for e in listed.events] == ["inv_real", "inv_real"]  # no phantom, no repeat


def _key_row(key: str) -> IdempotencyKeyRow:
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    return IdempotencyKeyRow(
        scope="s", key=key, fingerprint="f" * 64, response=None, create_time=moment, expire_time=moment
    )


OLD_SCAN_BUDGET = 5000  # what one ListEvents call looked at before the account was stored


async def test_an_account_filter_reads_only_that_accounts_events_however_many_others(app: App) -> None:
    async with channel_as(app, mint(app)) as channel:
        mine, other = await new_account(channel, 1), await new_account(channel, 2)
        admin = EventServiceStub(channel)
        # The account's first event, then more other events than one call used to scan, then its
        # second (past the old bound), then one of no account.
        await emit(
            app,
            ("invoice.created", "inv_mine_1", mine.id),
            *[("invoice.created", f"inv_{n}", other.id) for n in range(OLD_SCAN_BUDGET + 500)],
            ("invoice.paid", "inv_mine_1", mine.id),
            ("plan.created", "plan_1", ""),
        )
        listed = await admin.ListEvents(event_pb2.ListEventsRequest(account_id=mine.id))
        assert [(e.type, e.account_id) for e in listed.events] == [
            ("invoice.created", mine.id),
            ("invoice.paid", mine.id),
        ]
        assert listed.next_page_token == ""  # the whole answer in one page, no empty pages to walk
        first = await admin.ListEvents(event_pb2.ListEventsRequest(account_id=mine.id, page_size=1))
        rest = await admin.ListEvents(
            event_pb2.ListEventsRequest(account_id=mine.id, page_size=1, page_token=first.next_page_token)
        )
        assert [e.type for e in [*first.events, *rest.events]] == ["invoice.created", "invoice.paid"]
        assert first.next_page_token and not rest.next_page_token
    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=mine.id)) as channel:
        customer = EventServiceStub(channel)
        seen = await watch_all(customer, start=Start.START_OLDEST)
        assert kinds(seen) == ["-", "invoice.created/inv_mine_1", "invoice.paid/inv_mine_1", "-"]
        assert all(m.event.account_id == mine.id for m in seen[1:-1])
        # The closing heartbeat moves past the plan's event, which the filter left out.
        assert position(seen[-1].cursor) == position(seen[-2].cursor) + 1
        own = await customer.ListEvents(event_pb2.ListEventsRequest())
        assert [e.resource_id for e in own.events] == ["inv_mine_1", "inv_mine_1"]
    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=other.id)) as channel:
        theirs = await EventServiceStub(channel).ListEvents(event_pb2.ListEventsRequest(page_size=1000))
    assert len(theirs.events) == 1000 and {e.account_id for e in theirs.events} == {other.id}

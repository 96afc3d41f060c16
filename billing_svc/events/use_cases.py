"""Event use cases: a page of the outbox, and a watch that follows it as it grows.

Both read through the EventReader, which applies the filter in SQL (one short read each, no
transaction held): what a watcher holds at any time is one page of PAGE events. A caught-up
watch waits for this process's next commit that wrote events (core.outbox.CommitSignal), or at
most poll_seconds, which is how commits of other processes (replicas, `tally worker`) are seen.
The outbox is never purged today, so every cursor a watch sent stays valid; a purge, when it
comes, must keep the oldest kept position so that an older cursor is refused (CURSOR_EXPIRED),
never skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from billing_svc.events.domain import EventFilter, cursor_at, event_filter, position_of
from billing_svc.events.ports import EventReader
from core.errors import InvalidArgument
from core.outbox import CommitSignal, OutboxEvent
from core.pagination import PageTokens, page_size
from core.principal import Caller

PAGE = 500  # events read at a time
# A watch with a deadline ends this long before it, cleanly, after telling its cursor.
DEADLINE_MARGIN_SECONDS = 0.25
START_NOW = "now"
START_OLDEST = "oldest"


@dataclass(frozen=True)
class EventDeps:
    reader: EventReader
    page_tokens: PageTokens
    poll_seconds: float = 0.5  # the fallback: commits of other processes are seen this way
    heartbeat_seconds: float = 15.0
    # Set after each commit in this process that wrote events: caught-up watches look at once.
    commits: CommitSignal = field(default_factory=CommitSignal)
    # Set when the server shuts down: every watch ends (OK) at its next look.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop_watches(self) -> None:
        self.stopping.set()


@dataclass(frozen=True)
class Query:
    event_types: Sequence[str] = ()
    resource_type: str = ""
    resource_id: str = ""
    account_id: str = ""

    def checked(self, caller: Caller) -> EventFilter:
        return event_filter(
            self.event_types,
            self.resource_type,
            self.resource_id,
            self.account_id,
            customer_account=caller.customer_account,
        )


@dataclass(frozen=True)
class WatchItem:
    """One message of a watch: an event and the cursor after it, or a heartbeat (no event)."""

    cursor: str
    event: OutboxEvent | None = None


async def list_events(
    deps: EventDeps, caller: Caller, query: Query, *, size: int, page_token: str
) -> tuple[list[OutboxEvent], str]:
    """Up to `size` admitted events, oldest first, and the next page's token ("" at the end)."""
    wanted = query.checked(caller)
    limit = page_size(size)
    bound = wanted.as_query()
    position = _token_position(deps.page_tokens.decode(page_token, bound)) if page_token else 0
    # One more than asked: whether a next page exists is known without another request.
    found = (await deps.reader.read(wanted, position, limit + 1)).events
    if len(found) > limit:
        return found[:limit], deps.page_tokens.encode({"o": found[limit - 1].position}, bound)
    return found, ""


def _token_position(position: dict[str, object]) -> int:
    value = position.get("o")
    if not isinstance(value, int) or value < 0:
        raise InvalidArgument.field("page_token", "is not a page token from this API")
    return value


async def start_position(deps: EventDeps, cursor: str, start: str) -> int:
    """Where a watch begins: after its cursor, else now (the newest event) or before the oldest."""
    if cursor:
        if start:
            raise InvalidArgument.field("start", "must be unset when a cursor is given")
        position = position_of(cursor)
        if position > await deps.reader.newest_position():
            # Positions only grow: no server of this database sent it (another deployment, a restore).
            raise InvalidArgument.field("cursor", "is ahead of every event: not a cursor from this server")
        return position
    if start == START_OLDEST:
        return 0
    return await deps.reader.newest_position()


async def watch_events(
    deps: EventDeps,
    caller: Caller,
    query: Query,
    *,
    cursor: str,
    start: str,
    time_left: Callable[[], float | None],
) -> AsyncIterator[WatchItem]:
    """The admitted events after the start, then each one as it commits, until the deadline (less
    DEADLINE_MARGIN_SECONDS) or shutdown; a heartbeat first, after heartbeat_seconds without a
    message, and last. `time_left`: seconds to the call's deadline, None without one."""
    wanted = query.checked(caller)
    position = await start_position(deps, cursor, start)
    yield WatchItem(cursor_at(position))
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    while not deps.stopping.is_set():
        left = time_left()
        if left is not None and left <= DEADLINE_MARGIN_SECONDS:
            break
        # Taken before the read: a commit between the read and the wait has set it already.
        committed = deps.commits.next_commit()
        page = await deps.reader.read(wanted, position, PAGE)
        for event in page.events:
            position = event.position
            yield WatchItem(cursor_at(position), event)
            last_sent = loop.time()
        position = page.through
        if len(page.events) == PAGE:
            continue  # more backlog: no wait
        if loop.time() - last_sent >= deps.heartbeat_seconds:
            yield WatchItem(cursor_at(position))
            last_sent = loop.time()
        wait = deps.poll_seconds if left is None else min(deps.poll_seconds, left - DEADLINE_MARGIN_SECONDS)
        await _first_of(committed, deps.stopping, seconds=wait)
    yield WatchItem(cursor_at(position))


async def _first_of(*events: asyncio.Event, seconds: float) -> None:
    """Until one of `events` is set, or `seconds` have passed."""
    if any(event.is_set() for event in events):
        return
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()

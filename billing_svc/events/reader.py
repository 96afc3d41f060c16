"""The outbox read for clients: core.outbox's reader (the one webhook fan-out uses) with the
filter in SQL, one short session per page, so a watch holds no connection and no transaction
while it waits. An account's events come off the (account_id, position) index, one resource's off
the (resource_id, position) one; a type filter is checked on the events read in position order."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, or_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing_svc.events.domain import EventFilter
from billing_svc.events.ports import EventPage
from core import outbox
from core.db import UnitOfWork
from core.outbox import OutboxEventRow


def conditions(wanted: EventFilter) -> list[ColumnElement[bool]]:
    """`wanted` as SQL. A prefix compares with substr rather than LIKE: exact and case-sensitive
    on both backends (SQLite's LIKE ignores ASCII case), and nothing to escape."""
    found: list[ColumnElement[bool]] = []
    if wanted.event_types:
        exact = [kind for kind in wanted.event_types if not kind.endswith(".")]
        prefixes = [kind for kind in wanted.event_types if kind.endswith(".")]
        either = [func.substr(OutboxEventRow.type, 1, len(prefix)) == prefix for prefix in prefixes]
        if exact:
            either.append(OutboxEventRow.type.in_(exact))
        found.append(or_(*either))
    if wanted.resource_type:
        found.append(OutboxEventRow.resource_type == wanted.resource_type)
    if wanted.resource_id:
        found.append(OutboxEventRow.resource_id == wanted.resource_id)
    if wanted.account_id:
        found.append(OutboxEventRow.account_id == wanted.account_id)
    return found


class SqlEventReader:
    """Fills billing_svc.events.ports.EventReader."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def read(self, wanted: EventFilter, after_position: int, limit: int) -> EventPage:
        async with UnitOfWork(self._sessions) as uow:
            if wanted.takes_all:
                events = await outbox.read_events(uow.session, after_position, limit)
                return EventPage(events, events[-1].position if events else after_position)
            # The newest position first, then the filtered read up to it: committed positions are
            # a prefix (core/outbox.py), so nothing at or below it can commit after the first
            # statement, and a short page has seen everything up to it.
            newest = await outbox.newest_position(uow.session)
            if newest <= after_position:
                return EventPage([], after_position)
            events = await outbox.read_events(
                uow.session, after_position, limit, where=conditions(wanted), through=newest
            )
            return EventPage(events, events[-1].position if len(events) == limit else newest)

    async def newest_position(self) -> int:
        async with UnitOfWork(self._sessions) as uow:
            return await outbox.newest_position(uow.session)

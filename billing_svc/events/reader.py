"""The outbox read for clients: core.outbox's reader (the one webhook fan-out uses), one short
session per page, so a watch holds no connection and no transaction while it waits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import outbox
from core.db import UnitOfWork
from core.outbox import OutboxEvent


class SqlEventReader:
    """Fills billing_svc.events.ports.EventReader."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def read(self, after_position: int, limit: int) -> list[OutboxEvent]:
        async with UnitOfWork(self._sessions) as uow:
            return await outbox.read_events(uow.session, after_position, limit)

    async def newest_position(self) -> int:
        async with UnitOfWork(self._sessions) as uow:
            return await outbox.newest_position(uow.session)

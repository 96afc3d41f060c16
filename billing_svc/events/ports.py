"""What the event use cases need from storage, as a protocol (reader.py fills it)."""

from __future__ import annotations

from typing import Protocol

from core.outbox import OutboxEvent


class EventReader(Protocol):
    async def read(self, after_position: int, limit: int) -> list[OutboxEvent]:
        """Up to `limit` committed events after `after_position`, in position (commit) order."""
        ...

    async def newest_position(self) -> int:
        """The newest committed event's position; 0 when there is none."""
        ...

"""What the event use cases need from storage, as a protocol (reader.py fills it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from billing_svc.events.domain import EventFilter
from core.outbox import OutboxEvent


@dataclass(frozen=True)
class EventPage:
    """Events a filter admits, in position order, and how far the read looked: every committed
    event at or below `through` was either in `events` or not admitted, so a watch's cursor may
    move there (past the events its filter left out)."""

    events: list[OutboxEvent]
    through: int


class EventReader(Protocol):
    async def read(self, wanted: EventFilter, after_position: int, limit: int) -> EventPage:
        """Up to `limit` committed events after `after_position` that `wanted` admits, in
        position (commit) order."""
        ...

    async def newest_position(self) -> int:
        """The newest committed event's position; 0 when there is none."""
        ...

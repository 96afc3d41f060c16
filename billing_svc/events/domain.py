"""Reading the outbox, pure: the filter a request asks for, and cursors.

A cursor is a position in the outbox (core/outbox.py): everything at or below it was sent to the
watcher or filtered out. Positions only grow and are drawn in commit order, so resuming after a
cursor misses nothing and repeats nothing. Cursors are opaque to clients: `c` and the position in
decimal; nothing else is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import InvalidArgument, NotFound
from core.outbox import MAX_EVENT_TYPE, MAX_RESOURCE_ID, MAX_RESOURCE_TYPE
from core.text import excerpt

MAX_EVENT_TYPES = 50
CURSOR_PATTERN = "c(0|[1-9][0-9]{0,17})"  # below 10**18: within int64, as positions are
_CURSOR = re.compile(CURSOR_PATTERN)


@dataclass(frozen=True)
class EventFilter:
    """What a listing or a watch asks for; every given part must hold (empty parts take all).
    An event type ending in a dot is a prefix ("invoice."); the reader applies it all in SQL,
    the account on the outbox's stored `account_id` (core.outbox.account_of)."""

    event_types: tuple[str, ...] = ()
    resource_type: str = ""
    resource_id: str = ""
    account_id: str = ""

    @property
    def takes_all(self) -> bool:
        return not (self.event_types or self.resource_type or self.resource_id or self.account_id)

    def as_query(self) -> dict[str, object]:
        """What a page token is bound to."""
        return {
            "list": "events",
            "types": sorted(self.event_types),
            "rt": self.resource_type,
            "rid": self.resource_id,
            "acct": self.account_id,
        }


def event_filter(
    event_types: Sequence[str],
    resource_type: str,
    resource_id: str,
    account_id: str,
    *,
    customer_account: str | None,
) -> EventFilter:
    """The filter of a request, checked; a customer's is confined to its own account, and naming
    another one is NOT_FOUND, as for every other customer read of a foreign account."""
    if len(event_types) > MAX_EVENT_TYPES:
        raise InvalidArgument.field("event_types", f"at most {MAX_EVENT_TYPES} entries")
    for index, event_type in enumerate(event_types):
        if not 0 < len(event_type) <= MAX_EVENT_TYPE:
            raise InvalidArgument.field(
                f"event_types[{index}]", f"must have 1 to {MAX_EVENT_TYPE} characters"
            )
    if len(resource_type) > MAX_RESOURCE_TYPE:
        raise InvalidArgument.field("resource_type", f"at most {MAX_RESOURCE_TYPE} characters")
    if len(resource_id) > MAX_RESOURCE_ID:
        raise InvalidArgument.field("resource_id", f"at most {MAX_RESOURCE_ID} characters")
    if len(account_id) > MAX_RESOURCE_ID:
        raise InvalidArgument.field("account_id", f"at most {MAX_RESOURCE_ID} characters")
    if customer_account is not None:
        if account_id and account_id != customer_account:
            raise NotFound(
                f"account {excerpt(account_id)!r} not found",
                reason="ACCOUNT_NOT_FOUND",
                metadata={"id": excerpt(account_id)},
            )
        account_id = customer_account
    return EventFilter(tuple(event_types), resource_type, resource_id, account_id)


def cursor_at(position: int) -> str:
    return f"c{position}"


def position_of(cursor: str) -> int:
    """The position a cursor names; INVALID_ARGUMENT naming `cursor` when it is not one."""
    if _CURSOR.fullmatch(cursor) is None:
        raise InvalidArgument.field("cursor", "is not a cursor from this API (use one a watch sent)")
    return int(cursor[1:])

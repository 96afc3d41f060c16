"""The event service's rules (billing_svc/events/domain.py event_filter and position_of, servicer.py)."""

from __future__ import annotations

from billing_svc.events import domain as events
from core import outbox
from gateway.constraints.common import enum_values
from gateway.schemas import JSON

_PKG = "tally.billing.v1"
# servicer._STARTS: the three starts; another number is refused.
_STARTS = ("START_UNSPECIFIED", "START_NOW", "START_OLDEST")


def _filters(message: str) -> dict[str, JSON]:
    return {
        f"{_PKG}.{message}.event_types": {
            "maxItems": events.MAX_EVENT_TYPES,
            "items": {"minLength": 1, "maxLength": outbox.MAX_EVENT_TYPE},
        },
        f"{_PKG}.{message}.resource_type": {"maxLength": outbox.MAX_RESOURCE_TYPE},
        f"{_PKG}.{message}.resource_id": {"maxLength": outbox.MAX_RESOURCE_ID},
        f"{_PKG}.{message}.account_id": {"maxLength": outbox.MAX_RESOURCE_ID},
    }


EVENT_FIELDS: dict[str, JSON] = {
    **_filters("ListEventsRequest"),
    **_filters("WatchEventsRequest"),
    # The form of a cursor; one ahead of every event is refused too, which depends on stored state.
    f"{_PKG}.WatchEventsRequest.cursor": {"pattern": f"^({events.CURSOR_PATTERN})?$"},
    f"{_PKG}.WatchEventsRequest.start": {"enum": enum_values(_STARTS, (0, 1, 2))},
}

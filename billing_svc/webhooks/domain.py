"""Webhooks, pure: the retry schedule, event type filters, signing secrets. No I/O here."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

ENDPOINT_PREFIX = "whe"
DELIVERY_PREFIX = "whd"
ATTEMPT_PREFIX = "wha"
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

# Wait before each retry, after the first attempt failed: 5 s ... 24 h. The sum is just over three
# days, so a receiver that is down for a weekend still gets the event once it is back.
RETRY_SCHEDULE: tuple[timedelta, ...] = tuple(
    timedelta(seconds=s) for s in (5, 300, 1800, 7200, 18_000, 36_000, 36_000, 50_400, 72_000, 86_400, 86_400)
)


def next_due(attempts_made: int, last_attempt: datetime) -> datetime | None:
    """When to try again after `attempts_made` failed attempts; None when the schedule is spent."""
    if attempts_made < 1:
        raise ValueError("attempts_made counts the failed attempt just made")
    index = attempts_made - 1
    if index >= len(RETRY_SCHEDULE):
        return None
    return last_attempt + RETRY_SCHEDULE[index]


def matches(event_types: tuple[str, ...], event_type: str) -> bool:
    """An empty filter takes every event; an entry ending in '.' is a prefix ("invoice.")."""
    if not event_types:
        return True
    return any(event_type.startswith(f) if f.endswith(".") else event_type == f for f in event_types)


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def secret_associated_data(endpoint_id: str) -> bytes:
    """What a sealed secret is bound to: moved to another endpoint's row, it does not open."""
    return f"webhook-endpoint:{endpoint_id}".encode()


def is_success(status: int) -> bool:
    return 200 <= status < 300


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    event_types: tuple[str, ...]
    description: str
    secret_sealed: str
    enabled: bool
    create_time: datetime


def endpoint_to_dict(endpoint: Endpoint) -> dict[str, Any]:
    """For the idempotency record: the secret stays sealed (bound to the endpoint id)."""
    return {
        **endpoint.__dict__,
        "event_types": list(endpoint.event_types),
        "create_time": endpoint.create_time.isoformat(),
    }


def endpoint_from_dict(data: Mapping[str, Any]) -> Endpoint:
    return Endpoint(
        data["id"],
        data["url"],
        tuple(data["event_types"]),
        data["description"],
        data["secret_sealed"],
        data["enabled"],
        datetime.fromisoformat(data["create_time"]),
    )


# What a delivery shows (ListWebhookDeliveries): its stored status, and whether it was attempted.
VIEW_PENDING = "pending"
VIEW_SUCCEEDED = "succeeded"
VIEW_FAILED = "failed"
VIEW_RETRYING = "retrying"
VIEWS = (VIEW_PENDING, VIEW_SUCCEEDED, VIEW_FAILED, VIEW_RETRYING)
DELIVERY_RESOURCE_TYPE = "webhook_delivery"
ENDPOINT_RESOURCE_TYPE = "webhook_endpoint"
MAX_SHOWN_ERROR = 200


def view_of(status: str, attempt_count: int) -> str:
    if status == DELIVERED:
        return VIEW_SUCCEEDED
    if status == FAILED:
        return VIEW_FAILED
    return VIEW_RETRYING if attempt_count > 0 else VIEW_PENDING


def shown_error(error: str, url: str) -> str:
    """An attempt's error as a listing may show it: the endpoint's URL (which may carry a token in
    its query or user info) left out, at most MAX_SHOWN_ERROR characters."""
    shown = error.replace(url, "<endpoint url>") if url else error
    return shown if len(shown) <= MAX_SHOWN_ERROR else shown[: MAX_SHOWN_ERROR - 1] + "…"


@dataclass(frozen=True)
class Delivery:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    resource_type: str
    resource_id: str
    status: str  # PENDING, DELIVERED or FAILED, as stored
    attempt_count: int
    next_attempt_time: datetime | None
    last_response_status_code: int
    last_error: str  # already shortened by shown_error
    last_attempt_time: datetime | None
    event_time: datetime
    create_time: datetime

    @property
    def view(self) -> str:
        return view_of(self.status, self.attempt_count)


@dataclass(frozen=True)
class Attempt:
    """One attempt to send a delivery, as ListWebhookDeliveryAttempts shows it."""

    id: str
    delivery_id: str
    attempt_time: datetime
    response_status_code: int  # 0: no response
    error: str  # already shortened by shown_error
    duration_ms: int


def _time_or_none(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def delivery_to_dict(delivery: Delivery) -> dict[str, Any]:
    return {
        **delivery.__dict__,
        **{
            name: value.isoformat() if value else None
            for name in ("next_attempt_time", "last_attempt_time", "event_time", "create_time")
            for value in [getattr(delivery, name)]
        },
    }


def delivery_from_dict(data: Mapping[str, Any]) -> Delivery:
    return Delivery(
        **{
            **data,
            "next_attempt_time": _time_or_none(data["next_attempt_time"]),
            "last_attempt_time": _time_or_none(data["last_attempt_time"]),
            "event_time": datetime.fromisoformat(data["event_time"]),
            "create_time": datetime.fromisoformat(data["create_time"]),
        }
    )

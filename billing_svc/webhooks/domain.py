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

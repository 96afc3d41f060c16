"""Time comes from clock objects so tests (and per-account test clocks) can move it.

Two kinds: the wall clock for infrastructure, and `BillingClocks` resolving a clock per account.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


class BillingClocks(Protocol):
    """Where billing logic gets its time, per account.

    Infrastructure (tokens, keys, sessions, idempotency retention, rate limits) uses the
    wall clock. Billing (periods, renewals, proration) asks for the clock of the account
    it works on, so that moving one customer's test clock moves nobody else's time.
    """

    async def clock_for(self, account_id: str) -> Clock: ...


class WallBillingClocks:
    """Every account on the wall clock: the only kind there is until test clocks exist."""

    def __init__(self, wall: Clock):
        self._wall = wall

    async def clock_for(self, account_id: str) -> Clock:
        return self._wall

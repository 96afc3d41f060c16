"""Scenarios: the real server on a moved clock, over whole (simulated) billing periods.

A scenario builds the app with the composition root (`app.server.build`) on a
`FrozenClock` and drives it through gRPC, moving the clock between steps, once on
each backend (the `settings` fixture of tests/conftest.py). Nothing sleeps.

The clock moved is the wall clock, and tokens are verified against it: a token
minted before a move of more than its lifetime is refused afterwards. So the
channel here mints a fresh admin token for every call, at the simulated time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import delete, select

from app.server import App, build
from billing_svc.usage.tables import UsageEventIdRow, UsageHourlyRow, UsageRecordRow
from core.clock import FrozenClock
from core.settings import Settings
from tests.support import cheap_passwords, mint

# A Monday at 09:00 UTC, with microseconds, so that times survive every round trip exactly.
DAY_0 = datetime(2027, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)


class FreshAdminToken(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds an admin token minted at call time, so it is valid at whatever the clock says now."""

    def __init__(self, app: App):
        self._app = app

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        header = ("authorization", f"Bearer {mint(self._app)}")
        metadata = grpc.aio.Metadata(*(details.metadata or ()), header)
        return await continuation(details._replace(metadata=metadata), request)


@dataclass
class Simulation:
    app: App
    clock: FrozenClock
    channel: grpc.aio.Channel  # every call as admin, with a token minted at the simulated time

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def advance(self, delta: timedelta) -> datetime:
        """Move simulated time forward; returns the new now."""
        self.clock.advance(delta)
        return self.now


@asynccontextmanager
async def simulate(settings: Settings) -> AsyncIterator[Simulation]:
    """The server on `settings`, its wall clock frozen at DAY_0."""
    clock = FrozenClock(DAY_0)
    app = await build(settings, clock=clock, passwords=cheap_passwords())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}", interceptors=[FreshAdminToken(app)]
        ) as channel:
            yield Simulation(app, clock, channel)
    finally:
        await app.stop(grace=0)


@pytest.fixture
async def simulation(settings: Settings) -> AsyncIterator[Simulation]:
    async with simulate(without_usage_upkeep(settings)) as simulated:
        yield simulated


def without_usage_upkeep(settings: Settings) -> Settings:
    """No usage upkeep: on a wall clock in 2027 it would make PostgreSQL partitions months ahead of
    the real date, which outlive the tables' truncation and confuse the partition tests."""
    return settings.model_copy(update={"usage_upkeep_interval_seconds": 0})


async def forget_scenario_usage(app: App) -> None:
    """Delete the usage the scenario recorded (received on its 2027 wall clock): on PostgreSQL its
    rows sit in the DEFAULT partition of months no partition covers, which would stop the
    partition tests from making those months' partitions."""
    async with app.engine.begin() as connection:
        accounts = select(UsageRecordRow.account_id).where(UsageRecordRow.create_time >= DAY_0)
        await connection.execute(delete(UsageHourlyRow).where(UsageHourlyRow.account_id.in_(accounts)))
        await connection.execute(delete(UsageEventIdRow).where(UsageEventIdRow.account_id.in_(accounts)))
        await connection.execute(delete(UsageRecordRow).where(UsageRecordRow.create_time >= DAY_0))


@pytest.fixture
async def usage_simulation(settings: Settings) -> AsyncIterator[Simulation]:
    """A simulation that records usage, and forgets it afterwards."""
    async with simulate(without_usage_upkeep(settings)) as simulated:
        try:
            yield simulated
        finally:
            await forget_scenario_usage(simulated.app)

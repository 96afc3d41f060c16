"""Scenarios: the real server on a moved clock, over whole (simulated) billing periods.

A scenario builds the app with the composition root (`app.server.build`) on a
`FrozenClock` and drives it through gRPC, moving the clock between steps, once on
each backend (the `settings` fixture of tests/conftest.py). Nothing sleeps.

The clock moved is the wall clock, and tokens are verified against it: a token
minted before a move of more than its lifetime is refused afterwards. So the
channel here mints a fresh admin token for every call, at the simulated time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from sqlalchemy import delete, select

from app.server import App, build
from billing_svc.usage.tables import UsageEventIdRow, UsageHourlyRow, UsageRecordRow
from core.clock import FrozenClock
from core.settings import Settings
from tests.integration.sandbox_support import sandbox_process
from tests.support import cheap_passwords, check_invoice_totals, mint

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


# The sandbox payment gateway (a process of its own), for the collection scenarios; one per module.
@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with sandbox_process() as url:
        yield url


def paying_to(settings: Settings, sandbox_url: str) -> Settings:
    """`settings` with payments going to the sandbox gateway at `sandbox_url`."""
    return settings.model_copy(
        update={
            "sandbox_gateway_url": sandbox_url,
            "payment_gateway_default": "sandbox",
            "payment_retry_delay_seconds": 0.01,
        }
    )


@pytest.fixture
async def dunning(settings: Settings, sandbox_url: str) -> AsyncIterator[Simulation]:
    """Collection through the sandbox on the default dunning schedule (canceled at the end)."""
    async with simulated(paying_to(settings, sandbox_url)) as simulation:
        yield simulation


@pytest.fixture
async def dunning_unpaid(settings: Settings, sandbox_url: str) -> AsyncIterator[Simulation]:
    """The same, with the `unpaid` end state."""
    unpaid = paying_to(settings, sandbox_url).model_copy(update={"dunning_end_state": "unpaid"})
    async with simulated(unpaid) as simulation:
        yield simulation


async def charges_executed(sandbox_url: str) -> int:
    """How many charges the sandbox has made (declined ones too), over all keys."""
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox_url}/admin/stats") as response:
        stats = await response.json()
    return sum(stats["charges_executed"].values())


@asynccontextmanager
async def simulated(
    settings: Settings, overrides: Mapping[str, object] | None = None
) -> AsyncIterator[Simulation]:
    """The app on a FrozenClock at DAY_0 with `overrides` (app.server.build's), started; stopped after,
    its invoices checked first (`check_invoice_totals`) when the scenario passed. Usage upkeep is off
    (see `without_usage_upkeep`)."""
    settings = without_usage_upkeep(settings)
    clock = FrozenClock(DAY_0)
    app = await build(settings, clock=clock, passwords=cheap_passwords(), overrides=overrides)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}", interceptors=[FreshAdminToken(app)]
        ) as channel:
            yield Simulation(app, clock, channel)
        await check_invoice_totals(app)
    finally:
        await app.stop(grace=0)


@pytest.fixture
async def simulation(settings: Settings) -> AsyncIterator[Simulation]:
    async with simulated(settings) as running:
        yield running


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
    async with simulated(settings) as running:
        try:
            yield running
        finally:
            await forget_scenario_usage(running.app)

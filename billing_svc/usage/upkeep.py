"""The usage tables' upkeep, run by `tally serve`: monthly partitions made ahead, old event ids gone.

One pass at start, then one every interval (TALLY_USAGE_UPKEEP_INTERVAL_SECONDS, daily by
default), on the wall clock. Every replica may run it: creating a partition that exists is a no-op
(CREATE TABLE IF NOT EXISTS, each in its own savepoint), and overlapping purges delete each row
once. A failed pass (the database away) is logged and the next one tried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_svc.usage import partitions
from billing_svc.usage.unit_of_work import UsageUnitOfWork
from billing_svc.usage.use_cases import purge_event_ids
from core.clock import Clock

log = logging.getLogger("tally.usage")


class UsageUpkeep:
    def __init__(
        self,
        engine: AsyncEngine,
        new_uow: Callable[[], UsageUnitOfWork],
        clock: Clock,
        interval_seconds: float,
        *,
        months_ahead: int = 3,
    ):
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self._engine = engine
        self._new_uow = new_uow
        self._clock = clock
        self._interval = interval_seconds
        self._months_ahead = months_ahead
        self.passes = 0
        self._passed = asyncio.Condition()

    async def run_once(self) -> tuple[list[str], int]:
        """One pass: the partitions made, and how many event ids were purged."""
        now = self._clock.now()
        async with self._engine.begin() as connection:
            made = await partitions.ensure_partitions(connection, now, self._months_ahead)
        purged = await purge_event_ids(self._new_uow, now)
        return made, purged

    async def run(self) -> None:
        """Passes until cancelled."""
        while True:
            try:
                made, purged = await self.run_once()
            except Exception as exc:
                log.warning("usage upkeep failed; next try in %g s: %s", self._interval, exc)
            else:
                if made:
                    log.info("made usage partitions %s", ", ".join(made), extra={"partitions": made})
                if purged:
                    log.info("purged %d usage event ids past retention", purged, extra={"purged": purged})
            async with self._passed:
                self.passes += 1
                self._passed.notify_all()
            await asyncio.sleep(self._interval)

    async def wait_for_passes(self, count: int) -> None:
        """Return once `count` passes have finished, failed ones included."""
        async with self._passed:
            await self._passed.wait_for(lambda: self.passes >= count)

"""The usage tables' upkeep, run by `tally serve`: monthly partitions made ahead, old event ids gone.

One pass at start, then one every interval (TALLY_USAGE_UPKEEP_INTERVAL_SECONDS, daily by
default), on the wall clock. Every replica may run it: creating a partition that exists is a no-op
(CREATE TABLE IF NOT EXISTS, each in its own savepoint), and overlapping purges delete each row
once. A failed pass (the database away) is logged and the next one tried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from billing_svc.usage import partitions
from billing_svc.usage.unit_of_work import UsageUnitOfWork
from billing_svc.usage.use_cases import purge_event_ids
from core.clock import Clock
from core.periodic import PeriodicPasses

log = logging.getLogger("tally.usage")


class UsageUpkeep(PeriodicPasses):
    def __init__(
        self,
        engine: AsyncEngine,
        new_uow: Callable[[], UsageUnitOfWork],
        clock: Clock,
        interval_seconds: float,
        *,
        months_ahead: int = 3,
    ):
        super().__init__(interval_seconds, what="usage upkeep", log=log)
        self._engine = engine
        self._new_uow = new_uow
        self._clock = clock
        self._months_ahead = months_ahead

    async def run_once(self) -> tuple[list[str], int]:
        """One pass: the partitions made, and how many event ids were purged."""
        now = self._clock.now()
        async with self._engine.begin() as connection:
            made = await partitions.ensure_partitions(connection, now, self._months_ahead)
        purged = await purge_event_ids(self._new_uow, now)
        return made, purged

    async def run_pass(self) -> None:
        made, purged = await self.run_once()
        if made:
            log.info("made usage partitions %s", ", ".join(made), extra={"partitions": made})
        if purged:
            log.info("purged %d usage event ids past retention", purged, extra={"purged": purged})

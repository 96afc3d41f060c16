"""Background work that `tally serve` runs in passes: one at start, then one every interval.

A pass that fails (the database away) is logged and the next one tried; `passes` counts the
finished ones, failed ones included, so tests wait for a pass instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging


class PeriodicPasses:
    """Subclasses do one pass in `run_pass`; `run` repeats it until cancelled, or until `stop()`,
    which lets the pass in hand finish (a pass that loops over batches looks at `stopping` between
    them) instead of cutting it inside a transaction."""

    def __init__(self, interval_seconds: float, *, what: str, log: logging.Logger):
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self._interval = interval_seconds
        self._what = what
        self._log = log
        self.passes = 0
        self._passed = asyncio.Condition()
        self._stop = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """End `run` after the pass in hand (at once if it is between passes)."""
        self._stop.set()

    async def run_pass(self) -> object:
        """One pass; what it returns is the subclass's (run ignores it)."""
        raise NotImplementedError

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_pass()
            except Exception as exc:
                self._log.warning("%s failed; next try in %g s: %s", self._what, self._interval, exc)
            async with self._passed:
                self.passes += 1
                self._passed.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    async def wait_for_passes(self, count: int) -> None:
        """Return once `count` passes have finished, failed ones included."""
        async with self._passed:
            await self._passed.wait_for(lambda: self.passes >= count)

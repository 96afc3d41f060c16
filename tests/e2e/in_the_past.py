"""Work made in the past for a `tally` command to find due: an in-process server on the command's
database, its clock frozen some days back, its background jobs off, so that nothing made through
it is renewed, charged or delivered before the command under test runs on the real clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from app.server import build
from core.clock import FrozenClock
from core.settings import Settings
from tests.e2e.harness import JWT_SECRET, SECRET_KEY
from tests.support import channel_as, cheap_passwords, mint


@asynccontextmanager
async def channel_in_the_past(
    data_dir: Path, days: int, *, database_url: str | None = None, **overrides: Any
) -> AsyncIterator[grpc.aio.Channel]:
    """An admin's channel to a server on `data_dir` (or `database_url`, migrated already) whose
    clock is `days` before now, with the settings in `overrides` besides; the server is stopped
    on the way out."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        secret_key=SECRET_KEY,
        jwt_hs256_secret=JWT_SECRET,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        billing_worker=False,
        collection_worker=False,
        payment_reconciler=False,
        webhook_delivery=False,
        webhook_allow_private_targets=True,
        **overrides,
    )
    app = await build(
        settings, clock=FrozenClock(datetime.now(UTC) - timedelta(days=days)), passwords=cheap_passwords()
    )
    await app.start()
    try:
        async with channel_as(app, mint(app)) as channel:
            yield channel
    finally:
        await app.stop(grace=0)

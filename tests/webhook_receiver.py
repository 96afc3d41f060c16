"""A webhook receiver on loopback for tests: it answers 503 to its first `fail_first` requests,
then checks each delivery's Standard Webhooks signature and keeps what arrived."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from standardwebhooks import Webhook


@dataclass
class Receiver:
    fail_first: int
    secret: str = ""
    got: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    requests: int = 0
    url: str = ""
    check_time: bool = False

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests <= self.fail_first:
            return web.Response(status=503)
        body = await request.text()
        headers = dict(request.headers)
        if self.check_time:
            # Raises on a bad signature (or a stale timestamp): a 500, and the test fails.
            message = Webhook(self.secret).verify(body, headers)
        else:
            # The sender's clock is frozen and moved by days: the signature, against its own timestamp.
            sent_at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
            expected = Webhook(self.secret).sign(headers["webhook-id"], sent_at, body)
            if expected not in headers["webhook-signature"].split(" "):
                return web.Response(status=400)
            message = json.loads(body)
        self.got.append((request.headers["webhook-id"], message))
        return web.Response(status=204)


@asynccontextmanager
async def receiving(got: Receiver) -> AsyncIterator[Receiver]:
    """`got` listening on 127.0.0.1 (a free port; its `url` set) until the block ends."""
    app = web.Application()
    app.router.add_post("/hook", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    got.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield got
    finally:
        await runner.cleanup()

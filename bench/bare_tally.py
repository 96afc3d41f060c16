"""Tally's AccountService with no interceptors at all: the bench's "no interceptors" target.

Run as a subprocess with the same TALLY_* environment as `tally serve`:
`python bench/bare_tally.py`. It builds `app.server.build_components(settings)`
(the same database, keys and use-case dependencies as the real server) and
serves only `AccountServicer(components.accounts)` on a `grpc.aio.server()`
without interceptors: no tracing, access log, metrics, error mapping, auth
(the `authorization` header is ignored), rate limit or deadline. The transport
options are the real server's (`app.server.server_options`), so only the
interceptor chain differs. Event loop: TALLY_EVENT_LOOP (auto: uvloop when
installed). Binds TALLY_GRPC_ADDR (the bench passes 127.0.0.1:0) and prints one
JSON line `{"port": N, "database": "..."}` on stdout. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import grpc

from account_svc.servicer import AccountServicer
from app.server import build_components, server_options
from core import logs
from core.settings import Settings, SettingsError, load_settings
from tally.account.v1 import account_pb2_grpc


async def serve(settings: Settings) -> None:
    components = await build_components(settings)
    try:
        server = grpc.aio.server(options=server_options(settings))
        account_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(components.accounts), server)
        port = server.add_insecure_port(settings.grpc_addr)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"port": port, "database": settings.describe_database()}), flush=True)
        await stop.wait()
        await server.stop(settings.shutdown_grace_seconds)
    finally:
        await components.close()


def main() -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"bare_tally: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    if settings.event_loop in ("auto", "uvloop"):
        import uvloop

        uvloop.run(serve(settings))
    else:
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

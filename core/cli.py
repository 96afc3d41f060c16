"""The `tally` command: `tally serve` runs the server, `tally migrate` brings the schema up to date."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from core import logs
from core.settings import Settings, SettingsError, load_settings

log = logging.getLogger("tally")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="directory for the embedded database and keys (TALLY_DATA_DIR)")
    parser.add_argument("--database-url", help="SQLAlchemy database URL (TALLY_DATABASE_URL)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (TALLY_LOG_LEVEL)")
    parser.add_argument("--log-format", help="json, text or auto (TALLY_LOG_FORMAT)")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tally", description="Tally billing backend")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument(
        "--grpc-addr", help="HOST:PORT to listen on (TALLY_GRPC_ADDR, default 127.0.0.1:50051)"
    )
    _common_flags(serve)
    migrate = commands.add_parser("migrate", help="apply database migrations, then exit")
    _common_flags(migrate)
    return root


def _run(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    loop_name = settings.event_loop
    if loop_name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop_name == "uvloop":
                raise SettingsError("TALLY_EVENT_LOOP=uvloop but uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def _migrate(settings: Settings) -> None:
    from core import db, migrate

    engine = db.create_engine(settings)
    try:
        log.info("migrating %s", settings.describe_database())
        before, after = await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    if before == after:
        log.info("schema already at revision %s", after)
    else:
        log.info("schema migrated from %s to %s", before or "empty", after)


def main(argv: list[str] | None = None) -> None:
    options = vars(parser().parse_args(argv))
    command = options.pop("command")
    try:
        settings = load_settings(**options)
    except SettingsError as exc:
        print(f"tally: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    try:
        if command == "serve":
            from core.server import serve

            _run(settings, serve(settings))
        elif command == "migrate":
            _run(settings, _migrate(settings))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from core.migrate import SchemaOutOfDate

        if isinstance(exc, SchemaOutOfDate | SettingsError):
            log.error("%s", exc)
        elif isinstance(exc, RuntimeError) and "bind" in str(exc).lower():
            log.error("cannot listen on %s: %s", settings.grpc_addr, exc)
        elif isinstance(exc, OSError | ConnectionError):
            log.error("cannot reach %s: %s", settings.describe_database(), exc)
        else:
            log.exception("tally %s failed", command)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The `tally` command: `tally serve` runs the server, `tally migrate` brings the schema up to date."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sqlite3
import sys
from collections.abc import Coroutine, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from google.rpc import code_pb2

from app.flags import SECRETS, setting_flags
from core import logs
from core.settings import ListenError, Settings, SettingsError, check_can_listen, load_settings

log = logging.getLogger("tally")

# Exit status of a command failing with a core.errors exception, by google.rpc.Code: 2 when the
# command's own input was wrong (a bad argument, an account that does not exist), else 1.
_TALLY_ERROR_EXIT = {code_pb2.INVALID_ARGUMENT: 2, code_pb2.NOT_FOUND: 2}

# The settings each command takes as flags besides its own options (serve takes every one).
_COMMON = ("data_dir", "database_url", "log_level", "log_format")
_SETTING_FLAGS: dict[str, tuple[str, ...] | None] = {
    "serve": None,
    "migrate": _COMMON,
    "user": _COMMON,
    "token": (*_COMMON, "environment", "jwt_keys_dir", "jwt_signing_kid", "jwt_issuer", "jwt_audience"),
    "worker": (
        *_COMMON,
        "billing_worker_interval_seconds",
        "collection_worker",
        "collection_worker_interval_seconds",
        "dunning_retry_days",
        "dunning_end_state",
        "payment_reconciler",
        "payment_reconciler_interval_seconds",
        "sandbox_gateway_url",
        "webhook_delivery",
        "webhook_delivery_interval_seconds",
        "webhook_allow_private_targets",
        "worker_metrics_addr",
    ),
    "gateway": (
        "http_addr",
        "log_level",
        "log_format",
        "event_loop",
        "gateway_strict",
        "gateway_max_body_bytes",
        "gateway_proto_names",
        "cors_origins",
        "trusted_proxies",
    ),
}


def _version() -> str:
    try:
        return metadata.version("tally")
    except metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e . from the clone)"


def _subcommand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, **kwargs: Any
) -> argparse.ArgumentParser:
    more = "" if _SETTING_FLAGS[name] is None else " The other settings come from their TALLY_ variables."
    epilog = (
        f"Secrets come from the environment only: {', '.join(f'TALLY_{s.upper()}' for s in SECRETS)}.{more}"
    )
    return commands.add_parser(name, epilog=epilog, **kwargs)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tally", description="Tally billing backend")
    root.add_argument("--version", action="version", version=f"tally {_version()}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = _subcommand(commands, "serve", help="run the gRPC server (and the REST gateway on the HTTP port)")
    setting_flags(serve, _SETTING_FLAGS["serve"])
    # Set by the supervisor of `--workers N` on the workers it starts (app/supervisor.py).
    serve.add_argument("--worker-ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    migrate = _subcommand(commands, "migrate", help="apply database migrations, then exit")
    setting_flags(migrate, _SETTING_FLAGS["migrate"])

    user = _subcommand(commands, "user", help="manage users who log in")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    create = user_commands.add_parser(
        "create",
        help="create a user (the first admin, for example)",
        description="Create a user. The password is read from standard input with --password-stdin, "
        "or asked for twice on a terminal.",
    )
    create.add_argument("--email", required=True)
    create.add_argument("--role", required=True, choices=["admin", "customer"])
    create.add_argument("--account", default="", help="the customer's account id (customers only)")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    setting_flags(create, _SETTING_FLAGS["user"])

    gateway = _subcommand(
        commands,
        "gateway",
        help="serve only the REST gateway, in front of a remote gRPC server",
        description="Serve REST/JSON (and /openapi.json, /healthz, /metrics) on TALLY_HTTP_ADDR, transcoding "
        "every call to the gRPC server at --target, like grpc-gateway.",
    )
    gateway.add_argument("--target", required=True, help="HOST:PORT of the Tally gRPC server")
    setting_flags(gateway, _SETTING_FLAGS["gateway"])

    token = _subcommand(
        commands,
        "token",
        help="print a signed access token, for scripts and operators",
        description="Mint an access token with the server's keys (same TALLY_* settings as `tally serve`) "
        "and print it to standard output.",
    )
    token.add_argument("--role", required=True, choices=["admin", "service", "customer"])
    token.add_argument("--account", default="", help="account id (required with --role customer)")
    token.add_argument(
        "--scope", action="append", default=[], help="a scope (repeat); required with --role service"
    )
    token.add_argument(
        "--ttl", type=int, default=3600, help="lifetime in seconds (default 3600, at most 86400)"
    )
    token.add_argument(
        "--subject", default="", help="who the token is for, recorded in audit logs as cli:<subject>"
    )
    setting_flags(token, _SETTING_FLAGS["token"])
    worker = _subcommand(
        commands,
        "worker",
        help="run the billing and collection workers and webhook delivery alone (tally serve runs them too)",
        description="Renew due subscriptions and issue, number and finalize their invoices, then charge "
        "the invoices due for collection and retry declined ones on the dunning schedule, settle payments "
        "left unknown, and send the events to webhook endpoints, sharing the work with every other worker "
        "and server on the database. Runs until stopped, serving its metrics on TALLY_WORKER_METRICS_ADDR; "
        "--once runs what is due now and exits.",
    )
    worker.add_argument("--once", action="store_true", help="run what is due now, then exit")
    setting_flags(worker, _SETTING_FLAGS["worker"])
    _protos_parser(commands)
    _sandbox_gateway_parser(commands)
    return root


def _sandbox_gateway_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sandbox = commands.add_parser(
        "sandbox-gateway",
        help="run the sandbox payment gateway, for development and tests",
        description="Serve a fake payment gateway over HTTP, state in memory; the payment-method token "
        "decides each outcome (tok_success, tok_decline, tok_insufficient_funds, tok_timeout, tok_error, "
        "tok_delayed). Prints its address once listening.",
    )
    sandbox.add_argument("--listen", required=True, help="HOST:PORT (port 0 picks a free one)")
    sandbox.add_argument("--timeout-delay", type=float, default=30.0, help="seconds tok_timeout waits")
    sandbox.add_argument(
        "--pending-delay", type=float, default=10.0, help="seconds before tok_delayed succeeds"
    )
    sandbox.add_argument("--allow-remote", action="store_true", help="allow an address other than loopback")


def _protos_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    protos = commands.add_parser(
        "protos",
        help="the contracts as files, for clients in other languages",
        description="Work with Tally's .proto contracts.",
    )
    actions = protos.add_subparsers(dest="protos_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="write our protos and the Google protos they import to a folder",
        description="Write protos/ and exactly the Google .proto files it imports (from "
        "googleapis-common-protos and grpcio-tools' well-known types) to DIR, with an index in "
        "DIR/README.md. DIR is a complete import root for protoc or @grpc/proto-loader. DIR must be "
        "new, empty, or an earlier export (which is replaced).",
    )
    export.add_argument("dir", metavar="DIR", type=Path, help="the folder to write")


def _export_protos(target: Path) -> None:
    from app.contracts import ContractError, export

    try:
        files = export(target)
    except ContractError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {len(files.ours)} Tally and {len(files.imported)} Google .proto files to {target}")


def _run(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    loop_name = settings.event_loop
    if loop_name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop_name == "uvloop":
                raise SettingsError(
                    "TALLY_EVENT_LOOP: uvloop is not installed; pip install uvloop, or set auto or asyncio"
                ) from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def _worker(settings: Settings, once: bool) -> None:
    from app.server import (
        billing_worker,
        build_components,
        collection_worker,
        payment_reconciler,
        process_metrics,
        serve_worker_metrics,
        webhook_deliverer,
    )

    if not once and settings.worker_metrics_addr:
        # As `tally serve` does: a busy port is refused before the database is migrated.
        check_can_listen("TALLY_WORKER_METRICS_ADDR", settings.worker_metrics_addr)
    components = await build_components(settings)
    http = None
    try:
        # Run until stopped, the jobs report to metrics scraped as the server's are; --once has none.
        metrics = None if once else process_metrics(components)
        worker = billing_worker(components, metrics)
        if worker is None:
            raise UsageError("the billing module is not part of this build")
        # Collection runs after the billing work it follows (the invoices a renewal finalized).
        collector = collection_worker(components, metrics) if settings.collection_worker else None
        reconciler = payment_reconciler(components) if settings.payment_reconciler else None
        webhooks = webhook_deliverer(components, metrics)
        if metrics is not None:  # run until stopped
            http = await serve_worker_metrics(settings, metrics)
            started = (
                ("billing worker", worker, settings.billing_worker_interval_seconds),
                ("collection worker", collector, settings.collection_worker_interval_seconds),
                ("payment reconciler", reconciler, settings.payment_reconciler_interval_seconds),
                ("webhook delivery", webhooks, settings.webhook_delivery_interval_seconds),
            )
            running = [(what, job) for what, job, _ in started if job is not None]
            for what, job, interval in started:
                if job is not None:
                    log.info("%s %s started (a pass every %g s)", what, job.worker, interval)
            await _until_stopped(running, grace=settings.shutdown_grace_seconds)
            return
        if reconciler is not None:
            log.info("payment reconciler --once: %s", (await reconciler.one_pass()).summary())
        due = await worker.due_count()
        progress = Progress(sys.stderr, due, what="subscriptions")
        total = await worker.run_until_idle(progress=lambda report: progress.update(report.claimed))
        progress.done()
        log.info("billing worker --once: %s", total.summary())
        if collector is not None:
            collected = await collector.run_until_idle()
            log.info("collection worker --once: %s", collected.summary())
        if webhooks is not None:  # last: the events of the work above go out in this run
            log.info("webhook delivery --once: %s", (await webhooks.run_until_idle()).summary())
        if total.failed:
            raise UsageError(f"{total.failed} subscriptions failed; see the log above") from None
    finally:
        if http is not None:
            await http.stop()
        await components.close()


class _Job(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


async def _until_stopped(jobs: Sequence[tuple[str, _Job]], *, grace: float) -> None:
    """Run the jobs until SIGTERM or SIGINT, then stop them and return (exit 0). Each finishes the
    pass in hand (a batch of renewals, of charges, of sends), up to `grace` seconds
    (TALLY_SHUTDOWN_GRACE_SECONDS); one still running then is cancelled, its open transaction
    rolled back and its claims left to come back when their leases end. A job that ends by itself
    (it raised) stops the others and is raised."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = {asyncio.create_task(job.run(), name=what): job for what, job in jobs}
    stopping = asyncio.create_task(stop.wait(), name="stop signal")
    try:
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for job in tasks.values():
            job.stop()
        _, late = await asyncio.wait(tasks, timeout=grace)
    finally:
        for task in (*tasks, stopping):
            task.cancel()
        await asyncio.gather(*tasks, stopping, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    for task in done - {stopping}:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    cut = f"; {', '.join(task.get_name() for task in late)} cut short after {grace:g} s" if late else ""
    log.info("tally worker stopped by a signal%s", cut)


class Progress:
    """A progress bar on a terminal (carriage returns); nothing on a pipe, where the log says enough."""

    WIDTH = 30

    def __init__(self, stream: Any, total: int, *, what: str):
        self._stream = stream
        self._total = total
        self._what = what
        self._shown = stream.isatty()

    def update(self, count: int) -> None:
        if not self._shown:
            return
        whole = max(self._total, count, 1)
        filled = self.WIDTH * count // whole
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self._stream.write(f"\r[{bar}] {count}/{whole} {self._what}")
        self._stream.flush()

    def done(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()


async def _migrate(settings: Settings) -> None:
    from app import migrate
    from core import db

    engine = db.create_engine(settings)
    try:
        before, after = await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    # One line, after the fact: a failure is the only line when the database cannot be used.
    where = settings.describe_database()
    if before == after:
        log.info("schema already at revision %s (%s)", after, where)
    else:
        log.info("schema migrated from %s to %s (%s)", before or "empty", after, where)


class UsageError(Exception):
    """Bad command-line input; printed without a traceback, exit code 2."""


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UsageError("the passwords differ")
    return first


async def _create_user(settings: Settings, email: str, role: str, account: str, password: str) -> None:
    from account_svc.identity import use_cases
    from app.server import build_components
    from core.principal import Caller, Principal, Role

    components = await build_components(settings)
    try:
        operator = Principal(subject=f"cli:{getpass.getuser()}", role=Role.ADMIN, scopes=frozenset({"*"}))
        user = await use_cases.create_user(
            components.identity,
            Caller(operator, "cli:user create"),
            email=email,
            role=Role(role),
            account_id=account,
            password=password,
        )
    finally:
        await components.close()
    print(user.id)
    log.info("created %s user %s (%s)", role, user.email, user.id)


def _mint_token(
    settings: Settings, role: str, account: str, scopes: list[str], ttl: int, subject: str
) -> str:
    from account_svc.identity.keys import load_keyring
    from account_svc.identity.tokens import TokenIssuer
    from core.clock import SystemClock
    from core.principal import Principal, Role, scopes_for

    if not 1 <= ttl <= 86_400:
        raise UsageError("--ttl must be between 1 and 86400 seconds")
    kind = Role(role)
    if kind is Role.CUSTOMER and not account:
        raise UsageError("--role customer needs --account ACCOUNT_ID")
    if kind is not Role.CUSTOMER and account:
        raise UsageError("--account goes with --role customer only")
    if kind is Role.SERVICE and not scopes:
        raise UsageError("--role service needs at least one --scope")
    if kind is not Role.SERVICE and scopes:
        raise UsageError(
            "--scope goes with --role service only (admins hold every scope, customers a fixed set)"
        )
    _check_known_scopes(scopes)
    if account:
        _run(settings, _require_live_account(settings, account))
    principal = Principal(
        subject=f"cli:{subject or getpass.getuser()}",
        role=kind,
        scopes=scopes_for(kind, frozenset(scopes)),
        account_id=account or None,
    )
    keyring = load_keyring(settings, log=log)
    return TokenIssuer.from_settings(keyring, settings, SystemClock()).issue(principal, ttl).token


def _check_known_scopes(scopes: list[str]) -> None:
    from app.server import known_scopes

    known = known_scopes()
    unknown = sorted(set(scopes) - known)
    if unknown:
        raise UsageError(
            f"--scope {', '.join(map(repr, unknown))}: not a scope any Tally method requires; "
            f"known scopes: {', '.join(sorted(known))}"
        )


async def _require_live_account(settings: Settings, account_id: str) -> None:
    from account_svc.use_cases import get_account
    from app.server import build_components
    from core.errors import NotFound
    from core.principal import SYSTEM

    components = await build_components(settings)
    try:
        await get_account(components.accounts, SYSTEM, account_id)
    except NotFound:
        raise UsageError(f"--account {account_id!r}: no such account, or it is deleted") from None
    finally:
        await components.close()


def parse_command_line(argv: list[str] | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The command, the settings given as flags, and the command's own options."""
    options = vars(parser().parse_args(argv))
    command = options.pop("command")
    overrides = {name: options.pop(name) for name in list(options) if name in Settings.model_fields}
    return command, overrides, options


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command, overrides, extra = parse_command_line(argv)
    if command == "protos":
        _protos_main(extra)
        return
    if command == "sandbox-gateway":
        _sandbox_gateway_main(extra)
        return
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        for problem in str(exc).splitlines():
            print(f"tally: {problem}", file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    try:
        if command == "serve" and settings.workers > 1 and extra["worker_ready_fd"] is None:
            from app.supervisor import supervise

            sys.exit(supervise(settings, argv[argv.index("serve") + 1 :]))
        elif command == "serve":
            from app.server import serve

            _run(settings, serve(settings, ready_fd=extra["worker_ready_fd"]))
        elif command == "migrate":
            _run(settings, _migrate(settings))
        elif command == "worker":
            _run(settings, _worker(settings, extra["once"]))
        elif command == "user":
            password = _read_password(extra["password_stdin"])
            _run(settings, _create_user(settings, extra["email"], extra["role"], extra["account"], password))
        elif command == "gateway":
            from app.gateway_server import serve_gateway
            from core.settings import parse_host_port

            try:
                parse_host_port(extra["target"])
            except ValueError as exc:
                raise UsageError(f"--target: {exc}") from None
            check_can_listen("TALLY_HTTP_ADDR", settings.http_addr)
            _run(settings, serve_gateway(settings, extra["target"]))
        elif command == "token":
            print(
                _mint_token(
                    settings, extra["role"], extra["account"], extra["scope"], extra["ttl"], extra["subject"]
                )
            )
    except KeyboardInterrupt:
        sys.exit(130)
    except UsageError as exc:
        print(f"tally {command}: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        line, code = _failure(exc, settings)
        if line is None:
            log.exception("tally %s failed", command)
        else:
            log.error("%s", line)
        sys.exit(code)


def _protos_main(options: dict[str, Any]) -> None:
    """`tally protos ...` needs no settings: it reads only the installed packages."""
    try:
        _export_protos(options["dir"])
    except UsageError as exc:
        print(f"tally protos {options['protos_command']}: {exc}", file=sys.stderr)
        sys.exit(2)


def _sandbox_gateway_main(options: dict[str, Any]) -> None:
    """`tally sandbox-gateway` needs no settings: it is a stand-in for someone else's service."""
    from billing_svc.payments.gateways import sandbox_server
    from core.settings import parse_host_port

    try:
        host, port = parse_host_port(options["listen"])
    except ValueError as exc:
        print(f"tally sandbox-gateway: --listen: {exc}", file=sys.stderr)
        sys.exit(2)
    if not (options["allow_remote"] or sandbox_server.is_loopback(host)):
        print(f"tally sandbox-gateway: --listen {host}: not loopback; add --allow-remote", file=sys.stderr)
        sys.exit(2)
    delays = {"timeout_delay": options["timeout_delay"], "pending_delay": options["pending_delay"]}
    try:
        asyncio.run(sandbox_server.serve(host, port, **delays))
    except OSError as exc:
        print(f"tally sandbox-gateway: --listen {options['listen']}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)


# PostgreSQL refusing what TALLY_DATABASE_URL names, by asyncpg's exception type (subclasses
# first), and what to do about it.
_DATABASE_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (asyncpg.InvalidCatalogNameError, "create the database, or fix its name in the URL"),
    (asyncpg.InvalidPasswordError, "fix the password in the URL"),
    (
        asyncpg.InvalidAuthorizationSpecificationError,
        "create the role, or fix the user name in the URL (or the server's pg_hba.conf)",
    ),
    (asyncpg.InsufficientPrivilegeError, "grant the role the rights it needs (migrations create tables)"),
)


def _failure(exc: Exception, settings: Settings) -> tuple[str | None, int]:
    """What to print for an error and the exit status, by the error's type: 2 when the operator's
    input (a setting, an argument) is wrong, else 1. No line means a bug: log the traceback."""
    from account_svc.identity.keys import KeyConfigError
    from app.migrate import SchemaOutOfDate
    from core import status
    from core.errors import TallyError

    if isinstance(exc, ListenError | SettingsError | KeyConfigError):
        return str(exc), 2
    if isinstance(exc, TallyError):
        return status.describe(exc), _TALLY_ERROR_EXIT.get(status.code_of(exc), 1)
    if isinstance(exc, SchemaOutOfDate):
        return str(exc), 1
    return _resource_failure(exc, settings)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: SQLAlchemy wraps the driver's error, which wraps asyncpg's."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _resource_failure(exc: Exception, settings: Settings) -> tuple[str | None, int]:
    """The database, a file or a directory named by a setting, unusable: the setting and the remedy."""
    where = settings.describe_database()
    for cause in _causes(exc):
        for kind, remedy in _DATABASE_REFUSALS:
            if isinstance(cause, kind):
                return f"TALLY_DATABASE_URL: {where} refused: {cause}; {remedy}", 2
        if isinstance(cause, sqlite3.OperationalError) and cause.sqlite_errorcode == sqlite3.SQLITE_CANTOPEN:
            setting = "TALLY_DATABASE_URL" if settings.database_url else "TALLY_DATA_DIR"
            return f"{setting}: cannot open {where}: {cause}; its directory must exist and be writable", 2
        if isinstance(cause, OSError) and cause.filename is not None:
            setting = _setting_of_path(str(cause.filename), settings)
            return f"{setting}: {cause.filename}: {cause.strerror}", 2
        if isinstance(cause, OSError) and not settings.is_sqlite:
            # Down, or a wrong host or port: exit 1, since waiting for the server may be the answer.
            reason = cause.strerror or str(cause) or type(cause).__name__
            return (
                f"TALLY_DATABASE_URL: cannot reach {where}: {reason}; is it running, at this host and port?",
                1,
            )
    return None, 1


def _setting_of_path(path: str, settings: Settings) -> str:
    """The setting that named a file the process could not use."""
    if settings.jwt_keys_dir is not None and Path(path).is_relative_to(settings.jwt_keys_dir):
        return "TALLY_JWT_KEYS_DIR"
    return "TALLY_DATA_DIR"


if __name__ == "__main__":
    main()

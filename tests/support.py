"""Helpers shared by every test tier; fixtures live in conftest.py and use these.

Servers the suite needs: PostgreSQL at TALLY_TEST_POSTGRES_URL (default the local server at
127.0.0.1:5432 as role postgres) and Redis at TALLY_TEST_REDIS_URL. Without one, its tests
skip on a developer's machine and fail under CI=true (`unavailable`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.engine import make_url

from account_svc.identity.domain import Argon2Hasher
from core.principal import Principal, Role, scopes_for

if TYPE_CHECKING:
    from app.server import App
    from core.clock import Clock
    from core.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get(
    "TALLY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def _redis_url() -> str:
    """TALLY_TEST_REDIS_URL (default: the local Redis's db 15). Under pytest-xdist each worker takes
    its own db, counting down from that one (gw0 15, gw1 14, ...), so parallel sessions never share
    keys."""
    parts = urlsplit(os.environ.get("TALLY_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base - worker) % 16}"))


REDIS_URL = _redis_url()
TEST_SECRET = "test-page-token-secret-0123456789"
JWT_SECRET = "test-jwt-hs256-secret-0123456789abcdef"


def cheap_passwords() -> Argon2Hasher:
    """argon2id at its cheapest: the tests check behaviour, not hashing cost."""
    return Argon2Hasher(time_cost=1, memory_cost=1024)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(message: str) -> None:
    """A needed server is missing: fail under CI, skip on a developer's machine."""
    if in_ci():
        pytest.fail(f"{message} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def empty_postgres_database(prefix: str) -> AsyncIterator[str]:
    """The URL of a new database with no schema at all on the suite's server, dropped afterwards."""
    try:
        admin = await asyncpg.connect(asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}; set TALLY_TEST_POSTGRES_URL"
        )
        raise AssertionError("unreachable") from exc
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(probe: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str) -> None:
    """Poll `probe` until it is true; fail after `within` seconds (a bound, not a timing)."""
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


class FakeMonotonic:
    """Monotonic seconds that move only when told to, for code that takes a `clock=` callable."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def check_invoice_totals(app: App) -> None:
    """The invariant over every invoice a test stored: its total is the sum of its line rows. Run as
    a server a test used stops (`serving`, the `app` fixture, the scenarios' `simulated`), unless the
    test failed already."""
    from billing_svc.invoices.repository import count_mismatched_credit_notes, count_mismatched_totals

    async with app.engine.connect() as connection:
        mismatched = (await connection.execute(count_mismatched_totals())).scalar_one()
        credit_notes = (await connection.execute(count_mismatched_credit_notes())).scalar_one()
    assert mismatched == 0, f"{mismatched} stored invoice(s) whose total is not the sum of their lines"
    # Credit notes: total = the sum of their lines = pre + post payment parts; an invoice's credited
    # amounts are the sums of its credit notes' parts and never exceed its total.
    assert credit_notes == 0, f"{credit_notes} credit note(s) or credited invoice(s) that do not add up"


@asynccontextmanager
async def serving(settings: Settings, clock: Clock | None = None) -> AsyncIterator[App]:
    """The real server for `settings` (cheap password hashing, on `clock` if given), started, and
    stopped on the way out, after `check_invoice_totals` when the body ended without an error."""
    from app.server import build

    app = await build(settings, clock=clock, passwords=cheap_passwords())
    await app.start()
    try:
        yield app
        await check_invoice_totals(app)
    finally:
        await app.stop(grace=0)


# --- tokens and channels ---------------------------------------------------------------------


def mint(
    app: App, role: Role = Role.ADMIN, *, account_id: str | None = None, scopes: frozenset[str] = frozenset()
) -> str:
    """A token the app accepts, for `role` (customers need `account_id`, services `scopes`)."""
    principal = Principal(
        subject=f"test:{role.value}", role=role, scopes=scopes_for(role, scopes), account_id=account_id
    )
    return app.components.issuer.issue(principal, 600).token


def _with_token(details: grpc.aio.ClientCallDetails, header: tuple[str, str]) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), header)
    return details._replace(metadata=metadata)


# grpc.aio files a channel interceptor under the first call kind it implements, so one class
# per kind: a single class implementing all four would only ever see unary-unary calls.
class _UnaryUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]):
        self._header = header

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_token(details, self._header), request)


class _UnaryStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]):
        self._header = header

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_token(details, self._header), request)


class _StreamUnaryToken(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]):
        self._header = header

    async def intercept_stream_unary(self, continuation, details, requests):
        return await continuation(_with_token(details, self._header), requests)


class _StreamStreamToken(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]):
        self._header = header

    async def intercept_stream_stream(self, continuation, details, requests):
        return await continuation(_with_token(details, self._header), requests)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Channel interceptors that add `authorization: Bearer <token>` to calls of every kind."""
    header = ("authorization", f"Bearer {token}")
    return [
        _UnaryUnaryToken(header),
        _UnaryStreamToken(header),
        _StreamUnaryToken(header),
        _StreamStreamToken(header),
    ]


def channel_as(app: App, token: str | None) -> grpc.aio.Channel:
    """A channel to the app whose calls, of every kind, carry `token` (None: anonymous)."""
    interceptors = bearer_interceptors(token) if token else []
    return grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", interceptors=interceptors)


# --- error details ---------------------------------------------------------------------------


async def failing(call: object) -> grpc.aio.AioRpcError:
    """The error a call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


@dataclass
class Details:
    """What a google.rpc.Status carries, unpacked."""

    info: error_details_pb2.ErrorInfo = field(default_factory=error_details_pb2.ErrorInfo)
    violations: dict[str, str] = field(default_factory=dict)  # BadRequest: field -> description
    retry: error_details_pb2.RetryInfo | None = None
    quota: error_details_pb2.QuotaFailure | None = None

    @property
    def reason(self) -> str:
        return str(self.info.reason)


def unpack(status: status_pb2.Status) -> Details:
    found = Details()
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(found.info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.violations = {v.field: v.description for v in bad.field_violations}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            found.retry = error_details_pb2.RetryInfo()
            detail.Unpack(found.retry)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            found.quota = error_details_pb2.QuotaFailure()
            detail.Unpack(found.quota)
    return found


def details(error: grpc.aio.AioRpcError) -> Details:
    """The details of a failed call; the test fails if it carries no google.rpc.Status."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    found = unpack(status)
    assert found.info.domain in ("", "tally")
    return found


def reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    found = details(error)
    assert found.info.reason, "no ErrorInfo"
    assert found.info.domain == "tally"
    return found.reason


def emptying_statement(tables: Sequence[str]) -> str:
    """One query naming, of `tables`, those that hold rows. Emptying only those keeps a test's
    clean-up cheap: TRUNCATE makes and syncs new files for every table (and partition) it names,
    rows or not, which with usage's monthly partitions cost seconds per test."""
    # The names are the service modules' own table names, never input.
    probes = (f"SELECT '{name}' AS name WHERE EXISTS (SELECT 1 FROM {name})" for name in tables)  # noqa: S608
    return " UNION ALL ".join(probes)


def truncate_statement(tables: Sequence[str]) -> str | None:
    """TRUNCATE of `tables` (CASCADE: an empty table that references one of them goes too), or None."""
    return f"TRUNCATE {', '.join(tables)} CASCADE" if tables else None

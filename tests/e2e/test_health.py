"""End to end: health as an operator meets it, through a real `tally serve`.

Health/Watch and Health/List over the interceptor chain; the drain on SIGTERM (NOT_SERVING while
still serving, then refusing, in-flight calls finishing); readiness following a real PostgreSQL
of the test's own that is stopped and started again, while liveness stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.modules import MODULES
from tally.account.v1 import account_pb2, account_pb2_grpc
from tests.e2e.harness import RunningServer, admin_token, run_tally, running_server, server_env
from tests.e2e.private_postgres import PrivatePostgres
from tests.integration.test_concurrency import create_account, lock_waiters, row_locked
from tests.support import asyncpg_dsn, bearer_interceptors, empty_postgres_database, eventually

pytestmark = pytest.mark.e2e

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = tuple(service.full_name for module in MODULES for service in module.services)
EXIT_SECONDS = 30.0


def channel(server: RunningServer, *, token: bool = True) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        server.addr, interceptors=bearer_interceptors(admin_token()) if token else None
    )


async def http_status(server: RunningServer, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET `path` on the server's HTTP side."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{server.http_addr}{path}", timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        return response.status, await response.text()


async def health_of(server: RunningServer, service: str = "") -> int:
    async with channel(server, token=False) as plain:
        reply = await health_pb2_grpc.HealthStub(plain).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return int(reply.status)


async def create(server: RunningServer, label: str) -> account_pb2.Account:
    async with channel(server) as admin:
        stub = account_pb2_grpc.AccountServiceStub(admin)
        return await create_account(stub, f"{label}-{uuid.uuid4().hex[:8]}@example.test")


def refuses_connections(server: RunningServer) -> bool:
    host, _, port = server.addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection reached the backlog of a listener that closed before accepting it.
        return True


async def patch_over_rest(server: RunningServer, account_id: str, display_name: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            f"http://{server.http_addr}/v1/accounts/{account_id}",
            json={"displayName": display_name},
            headers={"Authorization": f"Bearer {admin_token()}"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as response,
    ):
        return response.status, await response.text()


@contextlib.asynccontextmanager
async def observing(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection outside any transaction: PostgreSQL keeps one snapshot of pg_stat_activity per
    transaction, so a lock holder asking would see the waiters of its first look forever."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        yield connection
    finally:
        await connection.close()


async def exit_code(server: RunningServer) -> int:
    return await asyncio.to_thread(server.wait_exit, EXIT_SECONDS)


# --- Watch and List ------------------------------------------------------------------------------------


async def test_watch_and_list_follow_a_drain_that_a_second_signal_ends(tmp_path: Path) -> None:
    # A long drain, so every step below happens inside it; the second SIGTERM ends it.
    env = server_env(tmp_path, TALLY_SHUTDOWN_DRAIN_SECONDS="120")
    with running_server(env, cwd=tmp_path) as server:
        async with channel(server, token=False) as plain:
            health = health_pb2_grpc.HealthStub(plain)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == SERVING

            listed = await health.List(health_pb2.HealthListRequest(), timeout=10)
            assert {name: entry.status for name, entry in listed.statuses.items()} == {
                "": SERVING,
                **dict.fromkeys(SERVICES, SERVING),
            }

            server.proc.send_signal(signal.SIGTERM)
            assert (await asyncio.wait_for(watch.read(), 10)).status == NOT_SERVING
            listed = await health.List(health_pb2.HealthListRequest(), timeout=10)
            assert {entry.status for entry in listed.statuses.values()} == {NOT_SERVING}
            assert server.proc.poll() is None
            # Still serving while it drains.
            assert (await create(server, "during-drain")).id.startswith("acct_")
            watch.cancel()

        server.proc.send_signal(signal.SIGTERM)
        assert await exit_code(server) == 0, server.stderr
    messages = server.log_messages()
    assert any(m.startswith("draining: health reports NOT_SERVING for 120 s") for m in messages), messages
    assert "second signal: ending the drain early" in messages, messages
    assert messages[-1] == "stopped", messages


# --- the drain, then the stop, with a call in flight ---------------------------------------------------


@pytest.fixture
async def migrated_postgres(tmp_path: Path) -> AsyncIterator[str]:
    """A new database on the suite's PostgreSQL, migrated by `tally migrate`."""
    async with empty_postgres_database("tally_e2e_health") as url:
        migrated = run_tally("migrate", server_env(tmp_path, TALLY_DATABASE_URL=url), cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        yield url


@pytest.mark.postgres
async def test_sigterm_drains_then_refuses_and_lets_the_call_in_flight_finish(
    migrated_postgres: str, tmp_path: Path
) -> None:
    # The drain must outlast the checks made inside it on a slow machine; it ends by itself.
    drain = 5
    env = server_env(tmp_path, TALLY_DATABASE_URL=migrated_postgres, TALLY_SHUTDOWN_DRAIN_SECONDS=str(drain))
    with running_server(env, cwd=tmp_path) as server:
        account, other = await create(server, "inflight-grpc"), await create(server, "inflight-rest")
        async with (
            channel(server) as admin,
            row_locked(migrated_postgres, account.id) as (_, held),
            row_locked(migrated_postgres, other.id) as (_, other_held),
            observing(migrated_postgres) as observer,
        ):
            # One update over gRPC and one over REST, each waiting on a row lock: provably in flight.
            update = asyncio.ensure_future(
                account_pb2_grpc.AccountServiceStub(admin).UpdateAccount(
                    account_pb2.UpdateAccountRequest(
                        account=account_pb2.Account(id=account.id, display_name="After")
                    ),
                    timeout=60,
                )
            )
            patch = asyncio.ensure_future(patch_over_rest(server, other.id, "Via REST"))

            async def both_wait() -> bool:
                return await lock_waiters(observer, migrated_postgres) == 2

            await eventually(both_wait, within=10, what="both updates waiting on their row locks")

            server.proc.send_signal(signal.SIGTERM)

            async def not_serving() -> bool:
                return await health_of(server) == NOT_SERVING

            await eventually(not_serving, within=drain, what="NOT_SERVING after SIGTERM")
            for service in SERVICES:
                assert await health_of(server, service) == NOT_SERVING
            assert (await http_status(server, "/readyz"))[0] == 503
            assert (await http_status(server, "/healthz"))[0] == 503
            assert (await http_status(server, "/livez"))[0] == 200
            # A new connection and a new call still work while it drains.
            assert (await create(server, "draining")).id.startswith("acct_")

            async def refusing() -> bool:
                return refuses_connections(server)

            await eventually(refusing, within=drain + 20, what="new connections refused after the drain")
            assert not update.done() and not patch.done()
            assert server.proc.poll() is None, "the server exited with calls in flight"
            await held.rollback()
            await other_held.rollback()
            updated = await update
            patched = await patch
        assert updated.display_name == "After"
        assert patched[0] == 200, patched
        assert json.loads(patched[1])["displayName"] == "Via REST", patched
        assert await exit_code(server) == 0, server.stderr
    messages = server.log_messages()
    assert messages[-1] == "stopped", messages


# --- readiness follows the database; liveness stays up --------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.mark.postgres
async def test_readiness_follows_a_stopped_and_restarted_database(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    env = server_env(
        tmp_path, TALLY_DATABASE_URL=private_postgres.url, TALLY_READINESS_PROBE_INTERVAL_SECONDS="0.2"
    )
    migrated = run_tally("migrate", env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr

    with running_server(env, cwd=tmp_path) as server:

        async def ready(expected: bool) -> bool:
            status, _ = await http_status(server, "/readyz")
            return status == (200 if expected else 503)

        assert await ready(True)
        assert await health_of(server) == SERVING
        account = await create(server, "before-outage")

        private_postgres.stop()
        await eventually(lambda: ready(False), within=15, what="/readyz 503 with the database stopped")
        assert await health_of(server) == NOT_SERVING
        for service in SERVICES:
            assert await health_of(server, service) == NOT_SERVING
        assert await http_status(server, "/healthz") == (503, '{"status": "NOT_SERVING"}')
        assert (await http_status(server, "/livez"))[0] == 200
        assert "tally_ready 0.0" in (await http_status(server, "/metrics"))[1]

        private_postgres.start()
        await eventually(lambda: ready(True), within=15, what="/readyz 200 with the database back")
        assert await health_of(server) == SERVING
        assert "tally_ready 1.0" in (await http_status(server, "/metrics"))[1]
        async with channel(server) as admin:
            got = await account_pb2_grpc.AccountServiceStub(admin).GetAccount(
                account_pb2.GetAccountRequest(id=account.id), timeout=10
            )
        assert got.id == account.id
        assert (await create(server, "after-outage")).id.startswith("acct_")
    messages = server.log_messages()
    assert any(m.startswith("the database does not answer") for m in messages), messages
    assert "the database answers again: ready" in messages, messages

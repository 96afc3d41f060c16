"""The client against a real `tally serve`: accounts and auth, a server killed mid-run, a server that
answers past the deadline, and a rate-limited caller, with the stored rows counted afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tally.account.v1 import account_pb2, auth_pb2, auth_pb2_grpc
from tally_client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    Unauthenticated,
)
from tests.client.live import BOUND_SECONDS, HoldingProxy, TallyProcess, retry_log, tally_process
from tests.e2e.harness import admin_token

pytestmark = pytest.mark.e2e

# Patient enough to outlast a restart of the server (a few seconds here), quick to notice it is back.
PATIENT = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.5, jitter=0.2, total_budget=60.0)


@pytest.fixture
def tally(tmp_path: Path) -> Iterator[TallyProcess]:
    with tally_process(tmp_path) as process:
        yield process


def fields(name: str) -> account_pb2.Account:
    return account_pb2.Account(display_name=name, email=f"{name}@example.com", currency_code="EUR")


def count_accounts(tally: TallyProcess, name: str) -> int:
    ((count,),) = tally.rows("SELECT count(*) FROM accounts WHERE display_name = ?", name)
    assert isinstance(count, int)
    return count


def test_accounts_round_trip_with_typed_errors(tally):
    with Client(tally.target, token=admin_token()) as client:
        created = [client.create_account(fields(f"round-{i}")) for i in range(3)]
        assert created[0].id.startswith("acct_")
        assert client.get_account(created[1].id).display_name == "round-1"
        listed = [account.id for account in client.list_accounts(page_size=2)]
        assert listed[:3] == [account.id for account in created]  # three pages of two, oldest first
        renamed = client.update_account(
            account_pb2.Account(id=created[2].id, display_name="renamed"), ["display_name"]
        )
        assert (renamed.display_name, renamed.email) == ("renamed", "round-2@example.com")

        with pytest.raises(NotFound) as missing:
            client.get_account("acct_missing")
        assert missing.value.reason
        with pytest.raises(InvalidArgument) as bad:
            client.create_account(display_name="Bad", email="not-an-email", currency_code="XYZ")
        assert {v.field for v in bad.value.field_violations} == {"account.email", "account.currency_code"}
        assert bad.value.domain == "tally"


def test_a_replayed_request_id_returns_the_first_account(tally):
    with Client(tally.target, token=admin_token()) as client:
        first = client.create_account(fields("replayed"), request_id="client-replay-1")
        again = client.create_account(fields("replayed"), request_id="client-replay-1")
    assert again.id == first.id
    assert count_accounts(tally, "replayed") == 1


def test_no_token_is_unauthenticated_and_not_retried(tally):
    with (
        retry_log() as (log, logger),
        Client(tally.target, logger=logger) as client,
        pytest.raises(Unauthenticated),
    ):
        client.get_account("acct_x")
    assert log.records == []


def test_a_service_account_gets_its_own_token(tally):
    channel = grpc.insecure_channel(tally.target)
    try:
        created = auth_pb2_grpc.AuthServiceStub(channel).CreateServiceAccount(
            auth_pb2.CreateServiceAccountRequest(
                service_account=auth_pb2.ServiceAccount(display_name="client test", scopes=["accounts:read"])
            ),
            metadata=(("authorization", f"Bearer {admin_token()}"),),
            timeout=BOUND_SECONDS,
        )
    finally:
        channel.close()
    account_id = created.service_account.id
    with Client(tally.target, token=admin_token()) as admin:
        account = admin.create_account(fields("seen-by-service"))
    with Client(tally.target, service_account=(account_id, created.client_secret)) as client:
        assert client.get_account(account.id).display_name == "seen-by-service"
    with (
        Client(tally.target, service_account=(account_id, "wrong secret")) as client,
        pytest.raises(Unauthenticated),
    ):
        client.get_account(account.id)


async def test_the_async_client_round_trip(tally):
    async with AsyncClient(tally.target, token=admin_token()) as client:
        created = await client.create_account(fields("async-1"))
        assert (await client.get_account(created.id)).id == created.id
        assert created.id in [account.id async for account in client.list_accounts(page_size=1)]
        with pytest.raises(NotFound):
            await client.get_account("acct_missing")


def test_a_server_killed_mid_call_and_restarted_stores_each_create_once(tally):
    """The server commits call 10 and dies before its reply leaves; the client retries the same
    request id on the restarted server and gets the first result. Every call is stored once."""
    names = [f"kill-{i}" for i in range(20)]
    proxy = HoldingProxy(tally.port)
    try:
        with (
            retry_log() as (log, logger),
            Client(proxy.target, token=admin_token(), retry=PATIENT, logger=logger) as client,
        ):
            results: list[account_pb2.Account] = []
            failure: list[BaseException] = []
            held = threading.Event()
            go_on = threading.Event()

            def run() -> None:
                try:
                    for i, name in enumerate(names):
                        if i == 10:
                            held.set()
                            go_on.wait(BOUND_SECONDS)
                        results.append(client.create_account(fields(name)))
                except BaseException as exc:
                    failure.append(exc)
                    held.set()

            worker = threading.Thread(target=run)
            worker.start()
            assert held.wait(BOUND_SECONDS)
            assert failure == []
            proxy.hold()
            go_on.set()
            tally.wait_for_row("SELECT 1 FROM accounts WHERE display_name = ?", "kill-10")
            tally.kill()
            proxy.release()
            tally.start()
            worker.join(BOUND_SECONDS * 2)
            assert not worker.is_alive()
            assert failure == []
    finally:
        proxy.close()
    assert [account.display_name for account in results] == names
    assert "UNAVAILABLE" in log.codes()
    assert [count_accounts(tally, name) for name in names] == [1] * len(names)
    ((total,),) = tally.rows("SELECT count(*) FROM accounts")
    assert total == len(names)


def test_a_server_answering_past_the_deadline(tally):
    """Without an id the deadline is the answer; with one, the retry (same id) replays the first."""
    proxy = HoldingProxy(tally.port)
    try:

        def released_once_stored(record: logging.LogRecord) -> None:
            tally.wait_for_row("SELECT 1 FROM accounts WHERE display_name = ?", "slow")
            proxy.release()

        with retry_log(released_once_stored) as (log, logger):
            client = Client(proxy.target, token=admin_token(), logger=logger, default_timeout=0.5)
            try:
                warm = client.create_account(fields("warm"))  # the connection is up before the hold
                proxy.hold()
                with pytest.raises(DeadlineExceeded):
                    client.get_account(warm.id)
                assert log.records == []

                slow = client.create_account(fields("slow"))
            finally:
                client.close()
    finally:
        proxy.close()
    assert log.codes() == ["DEADLINE_EXCEEDED"]
    assert slow.display_name == "slow"
    assert proxy.held_chunks > 0
    assert tally.rows("SELECT id FROM accounts WHERE display_name = ?", "slow") == [(slow.id,)]


def test_without_ids_a_create_past_the_deadline_surfaces(tally):
    proxy = HoldingProxy(tally.port)
    try:
        with retry_log() as (log, logger):
            client = Client(
                proxy.target, token=admin_token(), logger=logger, default_timeout=0.5, generate_ids=False
            )
            try:
                client.create_account(fields("warm"))
                proxy.hold()
                with pytest.raises(DeadlineExceeded):
                    client.create_account(fields("no-id"))
            finally:
                proxy.release()
                client.close()
    finally:
        proxy.close()
    assert log.records == []


def test_a_rate_limited_caller_waits_the_servers_delay_and_gets_through(tmp_path):
    limits = '{"default": {"rate": 4, "burst": 1}, "auth": {"rate": 100, "burst": 100}}'
    names = [f"limited-{i}" for i in range(4)]
    with tally_process(tmp_path, TALLY_RATE_LIMITS=limits) as tally:
        with retry_log() as (log, logger), Client(tally.target, token=admin_token(), logger=logger) as client:
            created = [client.create_account(fields(name)) for name in names]
        assert [account.display_name for account in created] == names
        assert log.codes() and set(log.codes()) == {"RESOURCE_EXHAUSTED"}
        # Each wait is the server's RetryInfo: at most one token's refill time (1/4 s).
        delays = [float(getattr(record, "tally_delay", -1)) for record in log.records]
        assert all(0 < delay <= 0.25 + 1e-6 for delay in delays), delays
        assert [count_accounts(tally, name) for name in names] == [1] * len(names)

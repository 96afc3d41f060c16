"""A process killed with SIGKILL between a payment gateway's answer and its recording: the charge was
made, nothing of it is in the database but the attempt in flight. A new process's reconciler looks
the attempt up at the sandbox gateway (a process of its own, which outlives the crash, as a real
gateway would) and records it: exactly one charge at the gateway, the invoice paid once.

Two processes die so: `tally serve` during a PayInvoice call, and `tally worker --once` while its
collection worker charges a renewal invoice (on the embedded default and on PostgreSQL, where
replicas share the work). The crash is real: `TALLY_TEST_CRASH_AFTER_CHARGE=1` makes the process
kill itself right after the charge returns (app/server.py), the worst moment for it; both paths
charge through the payments module's `drive` (billing_svc/payments/collect.py), which calls the hook.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from sqlalchemy import RowMapping, select, text
from sqlalchemy.sql import Executable

from app.server import CRASH_AFTER_CHARGE
from billing_svc.payments.tables import PaymentAttemptRow
from core import db
from core.settings import Settings
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import invoice_pb2, invoice_pb2_grpc, payment_pb2_grpc
from tally.billing.v1 import payment_pb2 as ppb
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan
from tests.e2e.harness import (
    SECRET_KEY,
    admin_metadata,
    launched_server,
    migrated_postgres_database,
    run_tally,
    server_env,
)
from tests.e2e.in_the_past import channel_in_the_past
from tests.integration.sandbox_support import sandbox_process
from tests.support import eventually

pytestmark = pytest.mark.timeout(120)

# The reconciler's wait must outlast the inline calls (the settings refuse less): one call of up to
# 2 s here, so an attempt left unsettled is the reconciler's 3 s after it was made.
RECONCILE_SOON = {
    "TALLY_PAYMENT_RETRY_ATTEMPTS": "1",
    "TALLY_PAYMENT_GATEWAY_TIMEOUT_SECONDS": "2",
    "TALLY_PAYMENT_RECONCILE_AFTER_SECONDS": "3",
}
WORKER_SECONDS = 30  # a bound on one `tally worker --once`


@pytest.fixture
async def migrated_postgres(tmp_path: Path) -> AsyncIterator[str]:
    async with migrated_postgres_database("tally_e2e_payment_crash", tmp_path) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def worker_database(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> AsyncIterator[str | None]:
    """None for the embedded default in tmp_path (a copy of the suite's migrated template), else a
    migrated PostgreSQL database's URL."""
    if request.param == "sqlite":
        shutil.copyfile(sqlite_template, tmp_path / "tally.db")
        yield None
        return
    async with migrated_postgres_database("tally_e2e_worker_crash", tmp_path) as url:
        yield url


async def open_invoice(address: str) -> invoice_pb2.Invoice:
    async with grpc.aio.insecure_channel(address) as channel:
        account = await account_pb2_grpc.AccountServiceStub(channel).CreateAccount(
            account_pb2.CreateAccountRequest(
                account=account_pb2.Account(
                    display_name="Crash", email="crash@example.com", currency_code="USD"
                )
            ),
            metadata=admin_metadata(),
            timeout=10,
        )
        line = invoice_pb2.NewInvoiceLine(description="Plan")
        line.unit_price.value = "42.00"
        return await invoice_pb2_grpc.InvoiceServiceStub(channel).CreateInvoice(
            invoice_pb2.CreateInvoiceRequest(account_id=account.id, lines=[line], finalize=True),
            metadata=admin_metadata(),
            timeout=10,
        )


async def stats(sandbox_url: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{sandbox_url}/admin/stats") as response,
    ):
        answer: dict[str, Any] = await response.json()
        return answer


async def rows(
    data_dir: Path, database_url: str | None, query: str | Executable, **params: object
) -> list[RowMapping]:
    """What the processes under test recorded, read on its own engine: `query` (SQL text with
    :named parameters, or a statement) on `database_url`, else on the embedded default in `data_dir`."""
    engine = db.create_engine(Settings(data_dir=data_dir, database_url=database_url, secret_key=SECRET_KEY))
    try:
        async with engine.connect() as connection:
            statement = text(query) if isinstance(query, str) else query
            return list((await connection.execute(statement, params)).mappings().all())
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_charge_whose_server_died_before_recording_it_is_settled_once(
    tmp_path: Path, migrated_postgres: str
) -> None:
    with sandbox_process() as sandbox_url:
        common = {
            "TALLY_DATABASE_URL": migrated_postgres,
            "TALLY_SANDBOX_GATEWAY_URL": sandbox_url,
            "TALLY_BILLING_WORKER": "false",
            "TALLY_WEBHOOK_DELIVERY": "false",
            **RECONCILE_SOON,
        }
        dying = server_env(tmp_path, **common, TALLY_PAYMENT_RECONCILER="false", **{CRASH_AFTER_CHARGE: "1"})
        with launched_server(dying, tmp_path) as first:
            address = await asyncio.to_thread(first.wait_for_marker)
            invoice = await open_invoice(address)
            async with grpc.aio.insecure_channel(address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as broken:
                    await invoice_pb2_grpc.InvoiceServiceStub(channel).PayInvoice(
                        invoice_pb2.PayInvoiceRequest(id=invoice.id, payment_method="tok_success"),
                        metadata=admin_metadata(),
                        timeout=30,
                    )
            assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
            assert await asyncio.to_thread(first.wait_exit, 10) == -9  # SIGKILL, by its own hand

        attempts = await rows(
            tmp_path,
            migrated_postgres,
            "SELECT a.id, a.status, p.status AS payment FROM payment_attempts a "
            "JOIN payments p ON p.id = a.payment_id WHERE p.invoice_id = :id",
            id=invoice.id,
        )
        assert [(a["status"], a["payment"]) for a in attempts] == [("in_flight", "pending")]
        key = attempts[0]["id"]
        assert (await stats(sandbox_url))["charges_executed"] == {key: 1}  # charged, not recorded

        env = server_env(tmp_path, **common, TALLY_PAYMENT_RECONCILER_INTERVAL_SECONDS="0.2")
        with launched_server(env, tmp_path) as second:
            await asyncio.to_thread(second.wait_for_marker)

            async def paid() -> bool:
                found = await rows(
                    tmp_path, migrated_postgres, "SELECT status FROM invoices WHERE id = :id", id=invoice.id
                )
                return found[0]["status"] == "paid"

            await eventually(paid, within=30, what="the reconciler to record the charge")
        assert (await stats(sandbox_url))["charges_executed"] == {key: 1}  # looked up, never charged again

    payments = await rows(
        tmp_path,
        migrated_postgres,
        "SELECT status, amount_minor FROM payments WHERE invoice_id = :id",
        id=invoice.id,
    )
    assert [(p["status"], p["amount_minor"]) for p in payments] == [("succeeded", 4200)]
    invoice_row = await rows(
        tmp_path, migrated_postgres, "SELECT amount_paid_minor FROM invoices WHERE id = :id", id=invoice.id
    )
    assert invoice_row[0]["amount_paid_minor"] == 4200
    paid_events = await rows(
        tmp_path,
        migrated_postgres,
        "SELECT count(*) AS n FROM outbox_events WHERE type = 'invoice.paid' AND resource_id = :id",
        id=invoice.id,
    )
    assert paid_events[0]["n"] == 1


async def subscribe_with_renewal_due(data_dir: Path, database_url: str | None) -> tuple[str, str]:
    """An account paying by `tok_success` and a monthly subscription made 35 days ago, whose first
    renewal is due to a worker on the real clock; its sign-up invoice paid out of band then, so
    that the renewal's is the one invoice to charge. (subscription id, sign-up invoice id)"""
    async with channel_in_the_past(data_dir, 35, database_url=database_url) as channel:
        account = await new_account(channel, 1)
        settings = ppb.PaymentSettings(account_id=account.id, default_payment_method="tok_success")
        await payment_pb2_grpc.PaymentServiceStub(channel).UpdatePaymentSettings(
            ppb.UpdatePaymentSettingsRequest(settings=settings), timeout=10
        )
        plan = await new_plan(channel, "monthly", base_minor=4900)
        subscription = await subscription_pb2_grpc.SubscriptionServiceStub(channel).CreateSubscription(
            spb.CreateSubscriptionRequest(
                subscription=spb.Subscription(account_id=account.id, plan_id=plan.id)
            ),
            timeout=10,
        )
        invoices = invoice_pb2_grpc.InvoiceServiceStub(channel)
        listed = await invoices.ListInvoices(
            invoice_pb2.ListInvoicesRequest(account_id=account.id), timeout=10
        )
        (signup,) = listed.invoices
        await invoices.PayInvoice(
            invoice_pb2.PayInvoiceRequest(id=signup.id, paid_out_of_band=True), timeout=10
        )
    return subscription.id, signup.id


async def test_a_renewal_charge_whose_worker_died_before_recording_it_is_settled_once(
    tmp_path: Path, worker_database: str | None
) -> None:
    subscription_id, signup_id = await subscribe_with_renewal_due(tmp_path, worker_database)
    where = {"TALLY_DATABASE_URL": worker_database} if worker_database else {}

    async def read(query: str, **params: object) -> list[RowMapping]:
        return await rows(tmp_path, worker_database, query, **params)

    with sandbox_process() as sandbox_url:
        env = server_env(tmp_path, **where, TALLY_SANDBOX_GATEWAY_URL=sandbox_url, **RECONCILE_SOON)

        def worker_once(**more: str) -> Any:
            return run_tally("worker", {**env, **more}, tmp_path, timeout=WORKER_SECONDS, args=("--once",))

        # The billing worker renews and finalizes; the collection worker charges the renewal's
        # invoice, and the process dies as the sandbox's answer comes back.
        crashed = await asyncio.to_thread(worker_once, **{CRASH_AFTER_CHARGE: "1"})
        assert crashed.returncode == -9, crashed.stderr  # SIGKILL, by its own hand
        assert "billing worker --once: 1 subscriptions claimed; renewal 1;" in crashed.stderr
        assert "collection worker --once:" not in crashed.stderr  # it died inside the collection

        attempts = await read(
            "SELECT a.id, a.status, p.status AS payment, p.invoice_id, i.subscription_id,"
            " i.status AS invoice, i.amount_paid_minor FROM payment_attempts a"
            " JOIN payments p ON p.id = a.payment_id JOIN invoices i ON i.id = p.invoice_id"
        )
        assert [
            (a["status"], a["payment"], a["subscription_id"], a["invoice"], a["amount_paid_minor"])
            for a in attempts
        ] == [("in_flight", "pending", subscription_id, "open", 0)]
        key, renewal_id = attempts[0]["id"], attempts[0]["invoice_id"]
        assert renewal_id != signup_id
        assert (await stats(sandbox_url))["charges_executed"] == {key: 1}  # charged, not recorded

        # The restarted worker's reconciler takes the attempt once it is due (3 s after it was made).
        due = await read_due_time(tmp_path, worker_database, key)

        async def attempt_due() -> bool:
            return datetime.now(UTC) >= due

        await eventually(attempt_due, within=10, what="the attempt left in flight to become due")
        restarted = await asyncio.to_thread(worker_once)
        assert restarted.returncode == 0, restarted.stderr
        assert "payment reconciler --once: 1 attempts and refunds claimed; 1 settled" in restarted.stderr
        assert (await stats(sandbox_url))["charges_executed"] == {key: 1}  # looked up, never charged again

        async def settled() -> list[tuple[object, ...]]:
            invoice = await read(
                "SELECT status, total_minor, amount_paid_minor FROM invoices WHERE id = :id", id=renewal_id
            )
            payments = await read(
                "SELECT status, amount_minor FROM payments WHERE invoice_id = :id", id=renewal_id
            )
            paid_events = await read(
                "SELECT count(*) AS n FROM outbox_events WHERE type = 'invoice.paid' AND resource_id = :id",
                id=renewal_id,
            )
            return [
                tuple(invoice[0].values()),
                *(tuple(p.values()) for p in payments),
                ("invoice.paid", paid_events[0]["n"]),
            ]

        after_restart = await settled()
        assert after_restart == [
            ("paid", 4900, 4900),
            ("succeeded", 4900),
            ("invoice.paid", 1),
        ]

        again = await asyncio.to_thread(worker_once)
        assert again.returncode == 0, again.stderr
        assert "payment reconciler --once: 0 attempts" in again.stderr
        assert "collection worker --once: 0 invoices claimed" in again.stderr
        assert await settled() == after_restart
        assert (await stats(sandbox_url))["charges_executed"] == {key: 1}


async def read_due_time(data_dir: Path, database_url: str | None, attempt_id: str) -> datetime:
    """When the reconciler may take the attempt (typed: SQLite keeps it as text)."""
    found = await rows(
        data_dir,
        database_url,
        select(PaymentAttemptRow.due_time).where(PaymentAttemptRow.id == attempt_id),
    )
    due = found[0]["due_time"]
    assert isinstance(due, datetime), found
    return due

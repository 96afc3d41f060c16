"""A server killed with SIGKILL between a payment gateway's answer and its recording: the charge was
made, nothing of it is in the database but the attempt in flight. A new server's reconciler looks
the attempt up at the sandbox gateway (a process of its own, which outlives the crash, as a real
gateway would) and records it: exactly one charge at the gateway, the invoice paid once.

The crash is real: `TALLY_TEST_CRASH_AFTER_CHARGE=1` makes `tally serve` kill itself right after
the charge returns (app/server.py), the worst moment for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest

from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import invoice_pb2, invoice_pb2_grpc
from tests.e2e.harness import admin_metadata, launched_server, migrated_postgres_database, server_env
from tests.integration.sandbox_support import sandbox_process
from tests.support import asyncpg_dsn, eventually

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
async def migrated_postgres(tmp_path: Path) -> AsyncIterator[str]:
    async with migrated_postgres_database("tally_e2e_payment_crash", tmp_path) as url:
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
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox_url}/admin/stats") as response:
        answer: dict[str, Any] = await response.json()
        return answer


async def rows(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def test_a_charge_whose_server_died_before_recording_it_is_settled_once(
    tmp_path: Path, migrated_postgres: str
) -> None:
    with sandbox_process() as sandbox_url:
        common = {
            "TALLY_DATABASE_URL": migrated_postgres,
            "TALLY_SANDBOX_GATEWAY_URL": sandbox_url,
            "TALLY_BILLING_WORKER": "false",
            "TALLY_WEBHOOK_DELIVERY": "false",
            # The reconciler's wait must outlast the inline calls (the settings refuse less): one
            # call of up to 2 s here, so an attempt is the reconciler's 3 s after it was made.
            "TALLY_PAYMENT_RETRY_ATTEMPTS": "1",
            "TALLY_PAYMENT_GATEWAY_TIMEOUT_SECONDS": "2",
            "TALLY_PAYMENT_RECONCILE_AFTER_SECONDS": "3",
        }
        dying = server_env(
            tmp_path, **common, TALLY_PAYMENT_RECONCILER="false", TALLY_TEST_CRASH_AFTER_CHARGE="1"
        )
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
            migrated_postgres,
            "SELECT a.id, a.status, p.status AS payment FROM payment_attempts a "
            "JOIN payments p ON p.id = a.payment_id WHERE p.invoice_id = $1",
            invoice.id,
        )
        assert [(a["status"], a["payment"]) for a in attempts] == [("in_flight", "pending")]
        key = attempts[0]["id"]
        assert (await stats(sandbox_url))["charges_executed"] == {key: 1}  # charged, not recorded

        env = server_env(tmp_path, **common, TALLY_PAYMENT_RECONCILER_INTERVAL_SECONDS="0.2")
        with launched_server(env, tmp_path) as second:
            await asyncio.to_thread(second.wait_for_marker)

            async def paid() -> bool:
                found = await rows(migrated_postgres, "SELECT status FROM invoices WHERE id = $1", invoice.id)
                return found[0]["status"] == "paid"

            await eventually(paid, within=30, what="the reconciler to record the charge")
        assert (await stats(sandbox_url))["charges_executed"] == {key: 1}  # looked up, never charged again

    payments = await rows(
        migrated_postgres, "SELECT status, amount_minor FROM payments WHERE invoice_id = $1", invoice.id
    )
    assert [(p["status"], p["amount_minor"]) for p in payments] == [("succeeded", 4200)]
    invoice_row = await rows(
        migrated_postgres, "SELECT amount_paid_minor FROM invoices WHERE id = $1", invoice.id
    )
    assert invoice_row[0]["amount_paid_minor"] == 4200
    paid_events = await rows(
        migrated_postgres,
        "SELECT count(*) AS n FROM outbox_events WHERE type = 'invoice.paid' AND resource_id = $1",
        invoice.id,
    )
    assert paid_events[0]["n"] == 1

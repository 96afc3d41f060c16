"""`tally worker` on the embedded default: `--once` renews what is due, invoices it, sends the
events to the webhook endpoints and exits; run until stopped, it sends them too, and counts its work
in the metrics it serves on TALLY_WORKER_METRICS_ADDR.

The subscription is made in-process on a clock set 70 days back, on the data directory the command
then uses (with its sign-up invoice, INV-000001); to the command, running on the real clock, the
subscription's first two renewals are due. A second run finds nothing.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app.server import build_components
from billing_svc.invoices.tables import InvoiceRow
from core.settings import Settings
from tally.billing.v1 import webhook_pb2
from tally.billing.v1.webhook_pb2_grpc import WebhookServiceStub
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan, set_payment_method
from tests.e2e.harness import SECRET_KEY, parse_log_line, run_tally, server_env, tally_command
from tests.e2e.in_the_past import channel_in_the_past
from tests.integration.sandbox_support import sandbox_process
from tests.support import eventually
from tests.webhook_receiver import Receiver, receiving


async def _subscribe_in_the_past(
    data_dir: Path, hook: Receiver | None = None, *, paying_with: str = ""
) -> str:
    """A subscription made 70 days ago; with `hook`, first a webhook endpoint for invoice events
    on it (its secret given to it); with `paying_with`, the account's default payment method, set
    after the sign-up. Nothing is delivered or collected here: the command under test does it."""
    async with channel_in_the_past(data_dir, 70) as channel:
        if hook is not None:
            made = await WebhookServiceStub(channel).CreateWebhookEndpoint(
                webhook_pb2.CreateWebhookEndpointRequest(
                    webhook_endpoint=webhook_pb2.WebhookEndpoint(url=hook.url, event_types=["invoice."])
                )
            )
            hook.secret = made.secret
        account = await new_account(channel, 1)
        plan = await new_plan(channel, "monthly", base_minor=4900)
        subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        created = await subs.CreateSubscription(
            spb.CreateSubscriptionRequest(
                subscription=spb.Subscription(account_id=account.id, plan_id=plan.id)
            )
        )
        if paying_with:
            await set_payment_method(channel, account.id, paying_with)
    return created.id


async def _invoices(data_dir: Path) -> list[tuple[str | None, str | None, str]]:
    settings = Settings(data_dir=data_dir, secret_key=SECRET_KEY)
    components = await build_components(settings)
    try:
        async with components.platform.readers() as session:
            rows = await session.execute(
                select(InvoiceRow.subscription_id, InvoiceRow.number, InvoiceRow.status)
            )
            return sorted((subscription, number, status) for subscription, number, status in rows.all())
    finally:
        await components.close()


async def test_worker_once_invoices_the_due_renewals_and_exits(tmp_path: Path) -> None:
    subscription_id = await _subscribe_in_the_past(tmp_path)
    env = server_env(tmp_path)
    result = run_tally("worker", env, tmp_path, args=("--once",))
    assert result.returncode == 0, result.stderr
    lines = [entry for entry in map(parse_log_line, result.stderr.splitlines()) if entry]
    messages = [entry["msg"] for entry in lines if " --once:" in entry.get("msg", "")]
    summaries = {message.split(" --once:")[0]: message for message in messages}
    # Each job of `tally worker` says what its one pass did.
    assert set(summaries) == {
        "billing worker",
        "collection worker",
        "payment reconciler",
        "webhook delivery",
    }, result.stderr
    assert (
        "1 subscriptions claimed" in summaries["billing worker"]
        and "renewal 2" in summaries["billing worker"]
    )
    # The account has no payment method: its invoices (the sign-up one and the two renewals') wait
    # to be paid by hand.
    assert "3 invoices claimed; no_payment_method 3" in summaries["collection worker"]
    assert "[#" not in result.stderr  # no progress bar when stderr is not a terminal
    assert await _invoices(tmp_path) == [
        (subscription_id, "INV-000001", "open"),
        (subscription_id, "INV-000002", "open"),
        (subscription_id, "INV-000003", "open"),
    ]

    again = run_tally("worker", env, tmp_path, args=("--once",))
    assert again.returncode == 0, again.stderr
    assert "0 subscriptions claimed" in again.stderr
    assert len(await _invoices(tmp_path)) == 3


@asynccontextmanager
async def _running_worker(env: dict[str, str], data_dir: Path) -> AsyncIterator[tuple[Process, Path]]:
    """`tally worker` run until stopped, its log in DATA_DIR/worker.log; terminated on the way out."""
    log = data_dir / "worker.log"
    with log.open("w") as log_file:
        worker = await asyncio.create_subprocess_exec(
            *tally_command(),
            "worker",
            env=env,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            yield worker, log
        finally:
            worker.terminate()
            await asyncio.wait_for(worker.wait(), timeout=30)


def _invoice_events(hook: Receiver) -> list[tuple[str, object]]:
    """What the receiver got (each signature checked by the Standard Webhooks verifier): the event
    types with their invoice's number, in arrival order."""
    return [(str(message["type"]), message["data"]["number"]) for _, message in hook.got]  # type: ignore[index]


async def test_worker_once_sends_the_events_of_its_work_to_webhook_endpoints(tmp_path: Path) -> None:
    async with receiving(Receiver(fail_first=0, check_time=True)) as hook:
        await _subscribe_in_the_past(tmp_path, hook)
        env = server_env(tmp_path, TALLY_WEBHOOK_ALLOW_PRIVATE_TARGETS="true")
        # In a thread: the receiver answers on this test's event loop while the command runs.
        result = await asyncio.to_thread(run_tally, "worker", env, tmp_path, args=("--once",))
        assert result.returncode == 0, result.stderr
        sent = [line for line in result.stderr.splitlines() if "webhook delivery --once:" in line]
        assert len(sent) == 1 and "6 delivered" in sent[0], result.stderr
        # The sign-up invoice's events (made before the command ran) and both renewals', once each,
        # in commit order; finalized ones carry their number. invoice.* only: the endpoint's filter.
        events = _invoice_events(hook)
        assert [kind for kind, _ in events] == ["invoice.created", "invoice.finalized"] * 3, events
        assert [number for kind, number in events if kind == "invoice.finalized"] == [
            "INV-000001",
            "INV-000002",
            "INV-000003",
        ]
        assert len({event_id for event_id, _ in hook.got}) == 6

        again = await asyncio.to_thread(run_tally, "worker", env, tmp_path, args=("--once",))
        assert again.returncode == 0, again.stderr
        assert "webhook delivery --once: 0 events fanned out into 0 deliveries" in again.stderr
        assert len(hook.got) == 6


async def test_a_running_worker_sends_webhooks_and_a_stopped_delivery_sends_none(tmp_path: Path) -> None:
    async with receiving(Receiver(fail_first=1, check_time=True)) as hook:
        await _subscribe_in_the_past(tmp_path, hook)
        env = server_env(
            tmp_path,
            TALLY_WEBHOOK_ALLOW_PRIVATE_TARGETS="true",
            TALLY_WEBHOOK_DELIVERY_INTERVAL_SECONDS="0.05",
        )
        # With delivery off, `tally worker --once` does the billing work and leaves the events.
        quiet = await asyncio.to_thread(
            run_tally, "worker", {**env, "TALLY_WEBHOOK_DELIVERY": "false"}, tmp_path, args=("--once",)
        )
        assert quiet.returncode == 0, quiet.stderr
        assert "webhook delivery" not in quiet.stderr and hook.requests == 0
        async with _running_worker(env, tmp_path) as (worker, log):

            async def all_arrived() -> bool:
                assert worker.returncode is None, "tally worker exited"
                return len(hook.got) == 6

            # The first request gets a 503: that delivery is retried on its schedule (5 s
            # later), and the other event of its invoice waits behind it, in order.
            await eventually(all_arrived, within=30, what="the running worker delivers all six events")
        stderr = log.read_text()
        # SIGTERM stops it cleanly: the jobs cancelled, exit 0, a last line saying so.
        assert worker.returncode == 0, stderr
        assert "tally worker stopped by a signal" in stderr
        events = _invoice_events(hook)
        for number in ("INV-000001", "INV-000002", "INV-000003"):
            assert ("invoice.finalized", number) in events, events
        assert sorted(kind for kind, _ in events) == ["invoice.created"] * 3 + ["invoice.finalized"] * 3
        # In order per invoice, the first invoice's events included: its created one was answered
        # 503 and sent again on its schedule, and its finalized one waited behind it.
        per_invoice: dict[object, list[str]] = {}
        for _, message in hook.got:
            per_invoice.setdefault(message["data"]["id"], []).append(str(message["type"]))  # type: ignore[index]
        assert list(per_invoice.values()) == [["invoice.created", "invoice.finalized"]] * 3, per_invoice
        assert "webhook delivery" in stderr and "started" in stderr


def _metrics_address(log: Path) -> str | None:
    """HOST:PORT of a running `tally worker`'s /metrics, from its log line, once it is there."""
    for entry in filter(None, map(parse_log_line, log.read_text().splitlines())):
        if str(entry.get("msg", "")).startswith("worker metrics on "):
            return str(entry["metrics_addr"])
    return None


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus text page as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_running_worker_reports_its_progress_in_metrics(tmp_path: Path) -> None:
    with sandbox_process() as sandbox_url:
        await _subscribe_in_the_past(tmp_path, paying_with="tok_success")
        env = server_env(
            tmp_path,
            TALLY_WORKER_METRICS_ADDR="127.0.0.1:0",
            TALLY_SANDBOX_GATEWAY_URL=sandbox_url,
            TALLY_COLLECTION_WORKER_INTERVAL_SECONDS="0.2",
        )
        async with _running_worker(env, tmp_path) as (worker, log):
            address: str | None = None

            async def listening() -> bool:
                nonlocal address
                assert worker.returncode is None, log.read_text()
                address = _metrics_address(log)
                return address is not None

            await eventually(listening, within=30, what="tally worker to log its metrics address")
            page: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

            async def counted() -> bool:
                nonlocal page
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://{address}/metrics") as response,
                ):
                    assert response.status == 200
                    page = _samples(await response.text())
                return page.get(("tally_collections_total", (("outcome", "paid"),))) == 3

            # The two renewals, then the three invoices (the sign-up one and the renewals')
            # charged through the sandbox gateway, whose breaker is now in the gauge.
            await eventually(counted, within=30, what="the worker's metrics to count its work")
    assert page[("tally_billing_work_total", (("kind", "renewal"),))] == 2, page
    assert page[("tally_payment_gateway_circuit_state", (("gateway", "sandbox"),))] == 0  # closed
    assert page[("tally_db_pool_size", (("pool", "main"),))] > 0


def test_a_busy_worker_metrics_address_is_refused_naming_it(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        address = f"127.0.0.1:{blocker.getsockname()[1]}"
        env = server_env(tmp_path, TALLY_WORKER_METRICS_ADDR=address)
        result = run_tally("worker", env, tmp_path, timeout=30)
        assert result.returncode == 2, result.stderr
        assert f"cannot listen on {address} (TALLY_WORKER_METRICS_ADDR): address already in use" in (
            result.stderr
        )
        assert not (tmp_path / "tally.db").exists(), "the database was migrated before the bind failed"
        # --once serves no metrics: the busy address is no obstacle to it.
        once = run_tally("worker", env, tmp_path, args=("--once",))
        assert once.returncode == 0, once.stderr
        assert "worker metrics on" not in once.stderr

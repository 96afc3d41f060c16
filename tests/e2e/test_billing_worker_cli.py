"""`tally worker` on the embedded default: `--once` renews what is due, invoices it, sends the
events to the webhook endpoints and exits; run until stopped, it sends them too.

The subscription is made in-process on a clock set 70 days back, on the data directory the command
then uses (with its sign-up invoice, INV-000001); to the command, running on the real clock, the
subscription's first two renewals are due. A second run finds nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from sqlalchemy import select

from app.server import build_components
from billing_svc.invoices.tables import InvoiceRow
from core.settings import Settings
from tally.billing.v1 import webhook_pb2
from tally.billing.v1.webhook_pb2_grpc import WebhookServiceStub
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan
from tests.e2e.harness import SECRET_KEY, parse_log_line, run_tally, server_env, tally_command
from tests.e2e.in_the_past import channel_in_the_past
from tests.support import eventually
from tests.webhook_receiver import Receiver, receiving


async def _subscribe_in_the_past(data_dir: Path, hook: Receiver | None = None) -> str:
    """A subscription made 70 days ago; with `hook`, first a webhook endpoint for invoice events
    on it (its secret given to it). Nothing is delivered here: the command under test does it."""
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
        log = tmp_path / "worker.log"
        with log.open("w") as log_file:
            worker = await asyncio.create_subprocess_exec(
                *tally_command(),
                "worker",
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
            try:

                async def all_arrived() -> bool:
                    assert worker.returncode is None, "tally worker exited"
                    return len(hook.got) == 6

                # The first request gets a 503: that delivery is retried on its schedule (5 s
                # later), and the other event of its invoice waits behind it, in order.
                await eventually(all_arrived, within=30, what="the running worker delivers all six events")
            finally:
                worker.terminate()
                await asyncio.wait_for(worker.wait(), timeout=30)
        stderr = log.read_text()
        events = _invoice_events(hook)
        for number in ("INV-000001", "INV-000002", "INV-000003"):
            assert ("invoice.finalized", number) in events, events
        assert sorted(kind for kind, _ in events) == ["invoice.created"] * 3 + ["invoice.finalized"] * 3
        assert "webhook delivery" in stderr and "started" in stderr

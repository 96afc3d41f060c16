"""`tally worker --once` on the embedded default: it renews what is due, invoices it and exits.

The subscription is made in-process on a clock set 70 days back, on the data directory the command
then uses (with its sign-up invoice, INV-000001); to the command, running on the real clock, the
subscription's first two renewals are due. A second run finds nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from app.server import build, build_components
from billing_svc.invoices.tables import InvoiceRow
from core.clock import FrozenClock
from core.settings import Settings
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan
from tests.e2e.harness import JWT_SECRET, SECRET_KEY, parse_log_line, run_tally, server_env
from tests.support import channel_as, cheap_passwords, mint


async def _subscribe_in_the_past(data_dir: Path) -> str:
    settings = Settings(
        data_dir=data_dir,
        secret_key=SECRET_KEY,
        jwt_hs256_secret=JWT_SECRET,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        billing_worker=False,
    )
    app = await build(
        settings, clock=FrozenClock(datetime.now(UTC) - timedelta(days=70)), passwords=cheap_passwords()
    )
    await app.start()
    try:
        async with channel_as(app, mint(app)) as channel:
            account = await new_account(channel, 1)
            plan = await new_plan(channel, "monthly", base_minor=4900)
            subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
            created = await subs.CreateSubscription(
                spb.CreateSubscriptionRequest(
                    subscription=spb.Subscription(account_id=account.id, plan_id=plan.id)
                )
            )
    finally:
        await app.stop(grace=0)
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
    assert set(summaries) == {"billing worker", "collection worker", "payment reconciler"}, result.stderr
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

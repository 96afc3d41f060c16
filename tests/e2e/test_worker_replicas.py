"""Two `tally worker --once` processes on one PostgreSQL database over the same due renewals: every
renewal invoiced exactly once, every subscription claimed by one process only, and the invoice
numbers gapless and unique across both (issue 13's "two workers" property, between processes; the
in-process test with 1,000 subscriptions is tests/integration/test_billing_worker.py).

The subscriptions are made on an in-process server whose clock is 35 days back (monthly plan,
sign-up invoices numbered then), so that to the two commands, on the real clock, one renewal of
each is due. Both start together and claim batches of 100 (SKIP LOCKED) until nothing is due.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from billing_svc.invoices.tables import InvoiceRow
from core.settings import RateLimit
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account, new_plan
from tests.e2e.harness import migrated_postgres_database, server_env, tally_command
from tests.e2e.in_the_past import channel_in_the_past

pytestmark = pytest.mark.e2e

SUBSCRIPTIONS = 400
_CLAIMED = re.compile(r"billing worker --once: (\d+) subscriptions claimed; renewal (\d+); (\d+) failed")


async def _subscribe_many(data_dir: Path, database_url: str) -> None:
    # The set-up makes 801 calls in a few seconds: past the default rate limit.
    unlimited = {"default": RateLimit(rate=100_000, burst=100_000)}
    async with channel_in_the_past(data_dir, 35, database_url=database_url, rate_limits=unlimited) as channel:
        plan = await new_plan(channel, "monthly", base_minor=4900)
        subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        for n in range(SUBSCRIPTIONS):
            account = await new_account(channel, n)
            await subs.CreateSubscription(
                spb.CreateSubscriptionRequest(
                    subscription=spb.Subscription(account_id=account.id, plan_id=plan.id)
                )
            )


async def _worker_once(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *tally_command(),
        "worker",
        "--once",
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_two_worker_processes_invoice_every_due_renewal_exactly_once(tmp_path: Path) -> None:
    async with migrated_postgres_database("tally_e2e_worker_replicas", tmp_path) as url:
        await _subscribe_many(tmp_path, url)
        env = server_env(tmp_path, TALLY_DATABASE_URL=url, TALLY_MIGRATE_ON_START="false")
        results = await asyncio.gather(_worker_once(env, tmp_path), _worker_once(env, tmp_path))
        claimed = 0
        for code, stderr in results:
            assert code == 0, stderr
            found = _CLAIMED.search(stderr)
            assert found is not None, stderr
            taken, renewed, failed = map(int, found.groups())
            assert taken == renewed and failed == 0, stderr
            claimed += taken
        assert claimed == SUBSCRIPTIONS  # no subscription claimed by both, none left out

        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                per_subscription = (
                    await connection.execute(
                        select(InvoiceRow.subscription_id, func.count()).group_by(InvoiceRow.subscription_id)
                    )
                ).all()
                numbers = (await connection.scalars(select(InvoiceRow.number))).all()
        finally:
            await engine.dispose()
        # The sign-up invoice and exactly one renewal's, for every subscription.
        assert len(per_subscription) == SUBSCRIPTIONS
        assert {count for _, count in per_subscription} == {2}
        gapless = [f"INV-{n:06d}" for n in range(1, 2 * SUBSCRIPTIONS + 1)]
        assert sorted(str(number) for number in numbers) == gapless

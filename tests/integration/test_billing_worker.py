"""The billing worker shared by several workers on one PostgreSQL: every due subscription is renewed
and invoiced exactly once, and the invoice numbers are gapless and unique, however the claims fall.

The subscriptions are made through the real server on a FrozenClock; the clock is then moved past
their first renewal and two workers (two claim loops, as two replicas would run) work the backlog
at once, in batches small enough that their claims interleave. Each subscription has its sign-up
invoice (March, made by CreateSubscription) before the workers start; they add the April renewal's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from app.server import App
from billing_svc.invoices.tables import InvoiceRow
from billing_svc.subscriptions.tables import PendingInvoiceItemRow
from billing_svc.worker import LEASE, QUEUE, BillingWorker, PassReport
from core.clock import FrozenClock
from core.settings import RateLimit, Settings
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_plan
from tests.support import channel_as, mint, serving

START = datetime(2027, 3, 1, 9, tzinfo=UTC)
# Issue 13's count: the two workers' claims (of 20) interleave many times over. bench/billing_run.py
# runs the same at 1,000 and 10,000, with the figures.
SUBSCRIPTIONS = 1000
CALL_DEADLINE_SECONDS = 30


@pytest.fixture
async def frozen_app(
    postgres_settings: Settings, postgres_clean: None
) -> AsyncIterator[tuple[App, FrozenClock]]:
    clock = FrozenClock(START)
    unlimited = RateLimit(rate=100_000, burst=100_000)  # the set-up makes 2,001 calls, 32 at a time
    settings = _in_2027(postgres_settings).model_copy(update={"rate_limits": {"default": unlimited}})
    async with serving(settings, clock) as app:
        yield app, clock


async def _subscribe_many(channel: grpc.aio.Channel, count: int) -> set[str]:
    """`count` accounts with a subscription each, 32 calls in flight. Each call has a deadline and is
    sent again with its request_id when the deadline passes or the channel drops it, as a client
    must: on a loaded machine an in-process call can stall without either side erring."""
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    subs = subscription_pb2_grpc.SubscriptionServiceStub(channel)
    plan = await new_plan(channel, "fleet", base_minor=1200)
    gate = asyncio.Semaphore(32)
    run = uuid.uuid4().hex[:8]  # emails and request ids stay unique across calls

    async def one(n: int) -> str:
        async with gate:
            account = await _retried(
                accounts.CreateAccount,
                account_pb2.CreateAccountRequest(
                    account=account_pb2.Account(
                        display_name=f"Customer {n}",
                        email=f"fleet{n}-{run}@example.test",
                        currency_code="USD",
                    ),
                    request_id=f"account-{run}-{n}",
                ),
            )
            created = await _retried(
                subs.CreateSubscription,
                spb.CreateSubscriptionRequest(
                    subscription=spb.Subscription(account_id=account.id, plan_id=plan.id),
                    request_id=f"subscription-{run}-{n}",
                ),
            )
            return str(created.id)

    return set(await asyncio.gather(*(one(n) for n in range(count))))


async def _retried(method: Any, request: Any, attempts: int = 3) -> Any:
    for attempt in range(attempts):
        try:
            return await method(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            retryable = error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
            if not retryable or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _in_2027(settings: Settings) -> Settings:
    """No usage upkeep: on a wall clock in 2027 it would make PostgreSQL partitions months ahead of
    the real date, which outlive the tables' truncation and confuse later partition tests."""
    return settings.model_copy(update={"usage_upkeep_interval_seconds": 0})


def _worker(app: App, clock: FrozenClock, name: str) -> BillingWorker:
    billing = app.components.services["billing"]
    return BillingWorker(
        billing.new_billing_uow,
        billing.billing_work,
        clock,
        batch=20,
        name=name,
    )


# Alone: in each of three runs with 4 pytest-xdist workers on 2 cores (400 subscriptions, the
# invoice number then taken mid-transaction) this test hung in its set-up's in-process calls (a dump
# showed one call pending on both sides, none of Tally's coroutines suspended); the cause was not
# found. Since the number is the transaction's last write it passed in both parallel runs tried,
# with 1,000, in 76 and 96 s: too near the suite's 120 s guard. Alone it takes about 32 s.
@pytest.mark.alone
async def test_two_workers_invoice_every_renewal_exactly_once(
    frozen_app: tuple[App, FrozenClock],
) -> None:
    app, clock = frozen_app
    async with channel_as(app, mint(app)) as channel:
        subscription_ids = await _subscribe_many(channel, SUBSCRIPTIONS)
    assert len(subscription_ids) == SUBSCRIPTIONS
    clock.advance(datetime(2027, 4, 1, 1, tzinfo=UTC) - START)  # one hour past the April renewals

    first, second = _worker(app, clock, "replica-a"), _worker(app, clock, "replica-b")
    assert await first.due_count() == SUBSCRIPTIONS
    a, b = await asyncio.gather(first.run_until_idle(), second.run_until_idle())
    assert a.failed == b.failed == 0
    assert a.claimed + b.claimed == SUBSCRIPTIONS  # no subscription was claimed twice
    assert a.work.get("renewal", 0) + b.work.get("renewal", 0) == SUBSCRIPTIONS

    async with app.components.platform.readers() as session:
        ours = InvoiceRow.subscription_id.in_(subscription_ids)
        renewals = InvoiceRow.create_time == datetime(2027, 4, 1, tzinfo=UTC)
        rows = (
            await session.execute(
                select(InvoiceRow.subscription_id, InvoiceRow.number).where(ours).where(renewals)
            )
        ).all()
        signups = await session.scalar(
            select(func.count()).select_from(InvoiceRow).where(ours).where(InvoiceRow.create_time == START)
        )
        left = await session.scalar(
            select(func.count())
            .select_from(PendingInvoiceItemRow)
            .where(PendingInvoiceItemRow.subscription_id.in_(subscription_ids))
            .where(PendingInvoiceItemRow.invoice_id.is_(None))
        )
    assert sorted(subscription_id for subscription_id, _ in rows) == sorted(subscription_ids)  # one each
    assert signups == SUBSCRIPTIONS  # and one sign-up invoice each, numbered first
    numbers = sorted(str(number) for _, number in rows)
    # gapless and unique, after the sign-up invoices' numbers
    assert numbers == [f"INV-{n:06d}" for n in range(SUBSCRIPTIONS + 1, 2 * SUBSCRIPTIONS + 1)]
    assert left == 0  # every fee (March's and April's) is on an invoice

    # A third worker, later, finds nothing left to do; the next renewals are due in May.
    clock.advance(timedelta(days=1))
    assert (await _worker(app, clock, "replica-c").run_until_idle()).claimed == 0


async def test_tally_serve_runs_the_worker_and_counts_its_work(settings: Settings) -> None:
    clock = FrozenClock(START)
    configured = _in_2027(settings).model_copy(
        update={"billing_worker": True, "billing_worker_interval_seconds": 0.05}
    )
    async with serving(configured, clock) as app:
        worker = app.billing_worker
        assert worker is not None
        async with channel_as(app, mint(app)) as channel:
            [subscription_id] = await _subscribe_many(channel, 1)
        clock.advance(datetime(2027, 4, 2, tzinfo=UTC) - START)
        await worker.wait_for_passes(worker.passes + 2)  # a whole pass after the move
        async with app.components.platform.readers() as session:
            rows = (await session.execute(select(InvoiceRow.subscription_id, InvoiceRow.status))).all()
        assert [tuple(row) for row in rows] == [(subscription_id, "open")] * 2  # sign-up and April
        renewals = app.metrics.registry.get_sample_value("tally_billing_work_total", {"kind": "renewal"})
        assert renewals == 1


async def test_a_worker_that_lost_its_lease_rolls_its_work_back(settings: Settings) -> None:
    """A worker claims, stalls past its lease (a long GC pause, a partition), and another takes the
    subscription over: the stalled one's work, when it resumes, finds the claim gone and is undone,
    so the period is invoiced once."""
    clock = FrozenClock(START)
    async with serving(_in_2027(settings), clock) as app:
        async with channel_as(app, mint(app)) as channel:
            [subscription_id] = await _subscribe_many(channel, 1)
        clock.advance(datetime(2027, 4, 1, 1, tzinfo=UTC) - START)
        stalled, other = _worker(app, clock, "stalled"), _worker(app, clock, "other")
        async with stalled._new_uow() as uow:
            [row] = await QUEUE.claim(uow.session, stalled.worker, now=clock.now(), lease=LEASE, limit=10)
            await uow.commit()
        assert (await other.run_until_idle()).claimed == 0  # the claim holds while its lease lasts

        clock.advance(LEASE + timedelta(seconds=1))
        async with other._new_uow() as uow:  # the lease ran out: the other worker claims it
            [taken] = await QUEUE.claim(uow.session, other.worker, now=clock.now(), lease=LEASE, limit=10)
            await uow.commit()
        late = PassReport()
        await stalled._run_one(QUEUE.key_of(row), subscription_id, late)
        assert (late.lost, late.work) == (1, {})  # it ran the renewal, then found the claim gone
        async with app.components.platform.readers() as session:
            signup = (await session.execute(select(InvoiceRow.id))).all()
        assert len(signup) == 1  # only the sign-up invoice: it rolled the renewal's back
        done = PassReport()
        await other._run_one(QUEUE.key_of(taken), subscription_id, done)
        assert (done.lost, done.work) == (0, {"renewal": 1})

        async with app.components.platform.readers() as session:
            invoices = (await session.execute(select(InvoiceRow.subscription_id))).scalars().all()
        assert invoices == [subscription_id] * 2  # the sign-up invoice and the renewal's, once

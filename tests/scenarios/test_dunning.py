"""Automatic collection and dunning on a test clock, against the real sandbox gateway (a process of
its own), on SQLite and PostgreSQL.

A monthly plan subscribed on 1 May renews on 1 June: the renewal's invoice is finalized and charged
at once; a decline makes the subscription past due, and the retries follow on the default schedule
(3, 5 and 7 days after finalization: 4, 6 and 8 June), each at its time inside one advance. After
the last one fails the subscription ends as TALLY_DUNNING_END_STATE says. Charges are counted at
the sandbox (/admin/stats).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any

import aiohttp
import pytest

from core.outbox import read_events
from core.settings import Settings
from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_plan
from tests.collection_support import SandboxCollector
from tests.scenarios.billing import Ledger, utc
from tests.scenarios.conftest import Simulation, simulated

pytestmark = pytest.mark.scenario

State = spb.Subscription.State
Status = ipb.Invoice.Status
RENEWAL = utc(2027, 6, 1)


@asynccontextmanager
async def _simulation(settings: Settings, collector: SandboxCollector) -> AsyncIterator[Simulation]:
    async with simulated(settings, {"invoice_collector": collector}) as running:
        collector.bind(running.app)
        yield running


@pytest.fixture
async def dunning(settings: Settings, collector: SandboxCollector) -> AsyncIterator[Simulation]:
    async with _simulation(settings, collector) as simulation:
        yield simulation


@pytest.fixture
async def dunning_unpaid(settings: Settings, collector: SandboxCollector) -> AsyncIterator[Simulation]:
    unpaid = settings.model_copy(update={"dunning_end_state": "unpaid"})
    async with _simulation(unpaid, collector) as simulation:
        yield simulation


async def _stats(sandbox_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox_url}/admin/stats") as response:
        return dict(await response.json())


def _charges_of(stats: dict[str, Any], invoice_id: str) -> int:
    return sum(count for key, count in stats["charges_executed"].items() if key.startswith(f"{invoice_id}/"))


async def _start(simulation: Simulation, collector: SandboxCollector, token: str) -> tuple[Ledger, str, str]:
    ledger = await Ledger.start(simulation.channel, utc(2027, 5, 1))
    account = await ledger.account(1)
    collector.tokens[account] = token
    plan = await new_plan(simulation.channel, "dunned", base_minor=4900)
    sub = await ledger.subscribe(account, plan.id)
    return ledger, account, sub.id


async def _invoices(simulation: Simulation, account: str) -> list[ipb.Invoice]:
    stub = invoice_pb2_grpc.InvoiceServiceStub(simulation.channel)
    return list((await stub.ListInvoices(ipb.ListInvoicesRequest(account_id=account))).invoices)


async def _events(simulation: Simulation, resource_id: str) -> list[str]:
    async with simulation.app.components.platform.readers() as session:
        events = await read_events(session, 0, 10_000)
    return [event.type for event in events if event.resource_id == resource_id]


async def test_declines_run_the_schedule_and_cancel(
    dunning: Simulation, collector: SandboxCollector, sandbox_url: str
) -> None:
    ledger, account, sub = await _start(dunning, collector, "tok_decline")

    # The renewal's invoice is charged at once: declined, past due, retried from 4 June.
    await ledger.advance(utc(2027, 6, 2))
    [invoice] = await _invoices(dunning, account)
    assert invoice.status == Status.STATUS_OPEN and invoice.amount_due.amount_minor == 9800
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE
    assert _charges_of(await _stats(sandbox_url), invoice.id) == 1

    # One advance over the rest of the schedule runs the three retries, in order, then cancels.
    await ledger.advance(utc(2027, 6, 11))
    assert _charges_of(await _stats(sandbox_url), invoice.id) == 4
    canceled = await ledger.get(sub)
    assert canceled.state == State.STATE_CANCELED
    assert canceled.cancel_time.ToDatetime(tzinfo=UTC) == utc(2027, 6, 8)  # the last retry's time
    [still] = await _invoices(dunning, account)
    assert still.status == Status.STATUS_OPEN  # left open: it is still owed
    assert (await _events(dunning, invoice.id)).count("invoice.dunning_step") == 4
    assert [
        e for e in await _events(dunning, sub) if e in ("subscription.past_due", "subscription.canceled")
    ] == [
        "subscription.past_due",
        "subscription.canceled",
    ]
    # Nothing more is tried: a later advance charges nothing.
    await ledger.advance(utc(2027, 7, 15))
    assert _charges_of(await _stats(sandbox_url), invoice.id) == 4


async def test_the_unpaid_end_state_and_a_payment_by_hand_restores_it(
    dunning_unpaid: Simulation, collector: SandboxCollector, sandbox_url: str
) -> None:
    simulation = dunning_unpaid
    subs = subscription_pb2_grpc.SubscriptionServiceStub(simulation.channel)
    ledger, account, sub = await _start(simulation, collector, "tok_insufficient_funds")
    await ledger.advance(utc(2027, 6, 11))
    [invoice] = await _invoices(simulation, account)
    assert _charges_of(await _stats(sandbox_url), invoice.id) == 4
    assert (await ledger.get(sub)).state == State.STATE_UNPAID
    entitled = await subs.GetEntitlements(spb.GetEntitlementsRequest(account_id=account))
    assert list(entitled.entitlements) == []  # no features while unpaid

    # Unpaid periods roll over without fees: July's renewal makes no invoice.
    await ledger.advance(utc(2027, 7, 2))
    assert (await ledger.get(sub)).state == State.STATE_UNPAID
    assert len(await _invoices(simulation, account)) == 1

    # Paid by hand: the next advance finds it paid and makes the subscription active again,
    # without charging anything.
    stub = invoice_pb2_grpc.InvoiceServiceStub(simulation.channel)
    paid = await stub.PayInvoice(ipb.PayInvoiceRequest(id=invoice.id, paid_out_of_band=True))
    assert paid.status == Status.STATUS_PAID
    await ledger.advance(utc(2027, 7, 3))
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    assert _charges_of(await _stats(sandbox_url), invoice.id) == 4
    assert "subscription.payment_recovered" in await _events(simulation, sub)


async def test_an_updated_card_pays_the_next_retry(
    dunning: Simulation, collector: SandboxCollector, sandbox_url: str
) -> None:
    ledger, account, sub = await _start(dunning, collector, "tok_decline")
    await ledger.advance(utc(2027, 6, 5))  # the first charge and the first retry (4 June) declined
    [invoice] = await _invoices(dunning, account)
    assert _charges_of(await _stats(sandbox_url), invoice.id) == 2
    assert (await ledger.get(sub)).state == State.STATE_PAST_DUE

    collector.tokens[account] = "tok_success"  # the customer updates the card
    before = (await _stats(sandbox_url))["total_charged_minor"].get("USD", 0)
    await ledger.advance(utc(2027, 6, 11))  # the retry of 6 June pays; none follows
    stats = await _stats(sandbox_url)
    assert _charges_of(stats, invoice.id) == 3
    assert stats["total_charged_minor"]["USD"] - before == 9800  # paid once, in full
    [paid] = await _invoices(dunning, account)
    assert paid.status == Status.STATUS_PAID
    assert paid.paid_time.ToDatetime(tzinfo=UTC) == utc(2027, 6, 6)
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE

    # July's renewal is charged at once and paid.
    await ledger.advance(utc(2027, 7, 2))
    july = (await _invoices(dunning, account))[0]
    assert july.id != invoice.id and july.status == Status.STATUS_PAID
    assert _charges_of(await _stats(sandbox_url), july.id) == 1


async def test_without_a_payment_method_the_invoice_waits(
    dunning: Simulation, collector: SandboxCollector, sandbox_url: str
) -> None:
    ledger, account, sub = await _start(dunning, collector, "tok_success")
    del collector.tokens[account]
    await ledger.advance(utc(2027, 6, 11))
    [invoice] = await _invoices(dunning, account)
    assert invoice.status == Status.STATUS_OPEN
    assert (await ledger.get(sub)).state == State.STATE_ACTIVE
    assert collector.calls[invoice.id] == 0
    assert _charges_of(await _stats(sandbox_url), invoice.id) == 0

"""The invariant over every stored invoice (its total is the sum of its lines) is checked as each
test server stops: by `serving` (and so the `app` fixture) and by the scenarios' `simulated`, so
a test that leaves a wrong total fails whichever way it ran the server."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import update

from app.server import App
from billing_svc.invoices.tables import InvoiceRow
from core.settings import Settings
from tally.billing.v1 import invoice_pb2_grpc
from tests.billing_support import new_account
from tests.integration.test_invoices import line, one_off
from tests.scenarios.conftest import simulated
from tests.support import channel_as, mint, serving

WRONG = "stored invoice\\(s\\) whose total is not the sum of their lines"


async def _store_a_wrong_total(app: App, channel: grpc.aio.Channel) -> None:
    account = await new_account(channel, 1)
    invoice = await invoice_pb2_grpc.InvoiceServiceStub(channel).CreateInvoice(
        one_off(account.id, line("Setup", "10.00"))
    )
    async with app.engine.begin() as connection:
        await connection.execute(
            update(InvoiceRow)
            .where(InvoiceRow.id == invoice.id)
            .values(total_minor=InvoiceRow.total_minor + 1, subtotal_minor=InvoiceRow.subtotal_minor + 1)
        )


async def test_serving_fails_a_test_that_left_a_wrong_total(settings: Settings) -> None:
    with pytest.raises(AssertionError, match=WRONG):
        async with serving(settings) as app, channel_as(app, mint(app)) as channel:
            await _store_a_wrong_total(app, channel)


async def test_a_simulation_fails_a_scenario_that_left_a_wrong_total(settings: Settings) -> None:
    with pytest.raises(AssertionError, match=WRONG):
        async with simulated(settings) as simulation:
            await _store_a_wrong_total(simulation.app, simulation.channel)

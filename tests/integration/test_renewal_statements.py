"""How many SQL statements the billing worker spends on one renewal of a usage plan, on SQLite and
PostgreSQL: the subscription's boundary, its invoice (the fee in advance, the usage in arrears, a
minimum spend) finalized at once, the claim and its release. Counted as
tests/integration/test_statement_count.py counts (every statement handed to the driver).

bench/billing_run.py counts the same per renewal, its claims (of 100) shared: 16.0. The invoice's
number is taken last (at commit, billing_svc/invoices/cycle_use_cases.py), on PostgreSQL by one
statement that also writes it on the invoice, so the count there did not change. Before a
cycle invoice finalized at once was stored once, finalized, and plan versions were read once per
transaction, a renewal took 27 there, and 28 here; before a plan version and its features were read
in one query, the invoice's lines went in one statement whatever their NULLs, and the audit rows
were written together at commit (core.db.defer_row), 20 there and 21 here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from billing_svc.invoices.tables import InvoiceLineRow, InvoiceRow
from billing_svc.worker import BillingWorker
from core.clock import FrozenClock
from core.settings import Settings
from tally.billing.v1.usage_pb2_grpc import UsageServiceStub
from tally.subscription.v1 import subscription_pb2 as spb
from tally.subscription.v1 import subscription_pb2_grpc
from tests.billing_support import new_account
from tests.integration.test_statement_count import counting
from tests.scenarios.usage_plan import record, usage_plan
from tests.support import channel_as, mint, serving

START = datetime(2027, 3, 1, 9, tzinfo=UTC)
USAGE_TIME = datetime(2027, 3, 15, tzinfo=UTC)
RENEWAL_RUN = datetime(2027, 4, 1, 1, tzinfo=UTC)
# The claim (of a batch of one), 13 of the boundary and its invoice, the release, the audit rows, the
# events. SQLite numbers the invoice in two statements (the sequence's upsert, then the invoice's
# UPDATE), PostgreSQL in one (SqlInvoiceRepository.number_invoice).
RENEWAL_BOUND = {"postgresql": 17, "sqlite": 18}


async def test_a_usage_renewal_costs_a_bounded_number_of_statements(settings: Settings) -> None:
    clock = FrozenClock(START)
    # No usage upkeep (partitions of 2027 on PostgreSQL would outlive the tables' truncation);
    # no grace period: the renewal's invoice is finalized in the renewal's transaction.
    configured = settings.model_copy(
        update={"usage_upkeep_interval_seconds": 0, "invoice_grace_period_seconds": 0}
    )
    async with serving(configured, clock) as app:
        async with channel_as(app, mint(app)) as channel:
            _meter, plan = await usage_plan(channel)
            account = await new_account(channel, 1)
            await subscription_pb2_grpc.SubscriptionServiceStub(channel).CreateSubscription(
                spb.CreateSubscriptionRequest(
                    subscription=spb.Subscription(account_id=account.id, plan_id=plan.id)
                )
            )
        clock.advance(USAGE_TIME - START)
        async with channel_as(app, mint(app)) as channel:  # a token minted at the new time
            for units in ("120", "30"):
                await record(UsageServiceStub(channel), account.id, units, USAGE_TIME)
        clock.advance(RENEWAL_RUN - USAGE_TIME)
        billing = app.components.services["billing"]
        worker = BillingWorker(billing.new_billing_uow, billing.billing_work, clock, batch=10, name="counted")
        with counting(app.components.platform.engine) as seen:
            report = await worker.one_pass()
        async with app.components.platform.readers() as session:
            renewal = (
                await session.execute(
                    select(InvoiceRow).where(InvoiceRow.create_time == RENEWAL_RUN.replace(hour=0))
                )
            ).scalar_one()
            kinds = (
                await session.scalars(
                    select(InvoiceLineRow.kind)
                    .where(InvoiceLineRow.invoice_id == renewal.id)
                    .order_by(InvoiceLineRow.position)
                )
            ).all()
    assert (report.claimed, report.work, report.failed) == (1, {"renewal": 1}, 0)
    # 150 units: 100 x $1 + 50 x $0.50 = $125 of usage, over the $60 minimum; the $20 fee in advance.
    assert (renewal.status, renewal.number, renewal.total_minor) == ("open", "INV-000002", 2000 + 12500)
    assert renewal.next_collection_time == RENEWAL_RUN.replace(hour=0)  # collected at once
    assert len(kinds) == 2, kinds
    bound = RENEWAL_BOUND[app.components.platform.engine.dialect.name]
    assert len(seen.sql) <= bound, "\n".join(seen.summary())

"""A boundary that passed before the billing worker ran it is run first by the next change, and
invoiced as the worker would have invoiced it.

On the wall clock (moved here as a FrozenClock) nothing renews a subscription until the worker
runs its due work; a change made in between must not prorate against a period that has ended.
The change runs the overdue work first, in its own transaction, and a preview computes the same
without writing anything.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1.invoice_pb2_grpc import InvoiceServiceStub
from tally.subscription.v1 import subscription_pb2 as pb
from tally.subscription.v1.subscription_pb2_grpc import SubscriptionServiceStub
from tests.billing_support import new_account, new_plan
from tests.scenarios.conftest import Simulation

pytestmark = pytest.mark.scenario


def _when(stamp: object) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined]


async def test_a_change_after_a_missed_renewal_renews_first(simulation: Simulation) -> None:
    channel = simulation.channel
    subs = SubscriptionServiceStub(channel)
    account = await new_account(channel, 1)
    small = await new_plan(channel, "small", base_minor=3000)
    large = await new_plan(channel, "large", base_minor=6000)
    sub = await subs.CreateSubscription(
        pb.CreateSubscriptionRequest(subscription=pb.Subscription(account_id=account.id, plan_id=small.id))
    )
    # DAY_0 is 2027-03-01 09:00 UTC: the first period is March, [Mar 1, Apr 1).
    assert (_when(sub.current_period_start), _when(sub.current_period_end)) == (
        datetime(2027, 3, 1, tzinfo=UTC),
        datetime(2027, 4, 1, tzinfo=UTC),
    )
    # April 16, 00:00: the April renewal is overdue (no worker ran it). 15 of April's 30 days remain.
    simulation.advance(datetime(2027, 4, 16, tzinfo=UTC) - simulation.now)
    preview = await subs.PreviewChange(pb.PreviewChangeRequest(id=sub.id, plan_id=large.id))
    assert _when(preview.subscription.current_period_start) == datetime(2027, 4, 1, tzinfo=UTC)
    # Credit 3000 * 15/30 = -1500, charge 6000 * 15/30 = 3000, both against April.
    assert [(i.kind, i.amount.amount_minor) for i in preview.items] == [
        (pb.PendingInvoiceItem.KIND_PRORATION_CREDIT, -1500),
        (pb.PendingInvoiceItem.KIND_PRORATION_CHARGE, 3000),
    ]
    everything = pb.ListPendingInvoiceItemsRequest(account_id=account.id, show_invoiced=True)
    listed = await subs.ListPendingInvoiceItems(everything)
    assert len(listed.items) == 1  # the preview wrote nothing: only March's fee (on the sign-up invoice)

    changed = await subs.ChangeSubscription(pb.ChangeSubscriptionRequest(id=sub.id, plan_id=large.id))
    assert [(i.kind, i.amount.amount_minor) for i in changed.items] == [
        (i.kind, i.amount.amount_minor) for i in preview.items
    ]
    listed = await subs.ListPendingInvoiceItems(everything)
    fees = [i for i in listed.items if i.kind == pb.PendingInvoiceItem.KIND_FEE]
    # March's fee, then April's, recorded at the boundary it belongs to (Apr 1), not at the change.
    assert [(_when(i.period_start), i.amount.amount_minor) for i in fees] == [
        (datetime(2027, 3, 1, tzinfo=UTC), 3000),
        (datetime(2027, 4, 1, tzinfo=UTC), 3000),
    ]
    assert _when(fees[1].create_time) == datetime(2027, 4, 1, tzinfo=UTC)
    # The renewal the change caught up on has its own invoice, as if the worker had run it: April's
    # fee, dated at the boundary; the change's prorations wait for May's.
    invoices = InvoiceServiceStub(channel)
    listed = await invoices.ListInvoices(ipb.ListInvoicesRequest(account_id=account.id))
    april, signup = listed.invoices
    assert [line.pending_item_id for line in signup.lines] == [fees[0].id]
    assert [line.pending_item_id for line in april.lines] == [fees[1].id]
    assert (_when(april.create_time), april.status) == (
        datetime(2027, 4, 1, tzinfo=UTC),
        ipb.Invoice.STATUS_OPEN,
    )
    pending = await subs.ListPendingInvoiceItems(pb.ListPendingInvoiceItemsRequest(account_id=account.id))
    assert [i.id for i in pending.items] == [i.id for i in changed.items]
    assert simulation.now - _when(changed.subscription.update_time) < timedelta(seconds=1)

"""A usage plan for the scenarios: a SUM meter priced with Lago's graduated example (see
test_usage_cycles.py), a $20 monthly fee and a $60 minimum spend, and helpers to record usage and
read invoices through the real server."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.type import decimal_pb2

from tally.billing.v1 import invoice_pb2 as ipb
from tally.billing.v1 import invoice_pb2_grpc, meter_pb2, meter_pb2_grpc
from tally.billing.v1 import usage_pb2 as upb
from tally.billing.v1.usage_pb2_grpc import UsageServiceStub
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tests.billing_support import usd
from tests.scenarios.billing import ts

Kind = ipb.InvoiceLine.Kind
MINIMUM = 6000  # $60.00 of usage a month
FEE = 2000  # $20.00 a month, in advance


def dec(value: str) -> decimal_pb2.Decimal:
    return decimal_pb2.Decimal(value=value)


def lago_tiers() -> plan_pb2.Price:
    tiers = [
        plan_pb2.Tier(up_to=dec("100"), unit_price=dec("1")),
        plan_pb2.Tier(up_to=dec("200"), unit_price=dec("0.50")),
        plan_pb2.Tier(unit_price=dec("0.10")),
    ]
    return plan_pb2.Price(graduated=plan_pb2.TieredPrice(tiers=tiers))


async def usage_plan(channel: grpc.aio.Channel) -> tuple[meter_pb2.Meter, plan_pb2.Plan]:
    meters = meter_pb2_grpc.MeterServiceStub(channel)
    meter = await meters.CreateMeter(
        meter_pb2.CreateMeterRequest(
            meter=meter_pb2.Meter(
                code="api-calls",
                display_name="API calls",
                unit_label="call",
                aggregation=meter_pb2.Meter.AGGREGATION_SUM,
            )
        )
    )
    plan = await plan_pb2_grpc.PlanServiceStub(channel).CreatePlan(
        plan_pb2.CreatePlanRequest(
            plan=plan_pb2.Plan(
                code="usage",
                display_name="Usage",
                currency_code="USD",
                billing_interval=plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_MONTH, count=1),
                base_fee=usd(FEE),
                metered_charges=[
                    plan_pb2.MeteredCharge(meter_id=meter.id, description="API calls", price=lago_tiers())
                ],
                minimum_spend=usd(MINIMUM),
            )
        )
    )
    return meter, plan


async def record(usage: UsageServiceStub, account_id: str, units: str, when: datetime) -> None:
    await usage.CreateUsageRecord(
        upb.CreateUsageRecordRequest(
            account_id=account_id,
            usage_record=upb.UsageRecord(service="api-calls", units_consumed=dec(units), event_time=ts(when)),
        )
    )


async def invoices_of(channel: grpc.aio.Channel, account_id: str) -> list[ipb.Invoice]:
    stub = invoice_pb2_grpc.InvoiceServiceStub(channel)
    listed = await stub.ListInvoices(ipb.ListInvoicesRequest(account_id=account_id, page_size=100))
    return list(reversed(listed.invoices))  # oldest first


def sums(invoice: ipb.Invoice) -> tuple[int, int, int, int]:
    """(status, total, credits applied, amount due)."""
    return (
        invoice.status,
        invoice.total.amount_minor,
        invoice.credits_applied.amount_minor,
        invoice.amount_due.amount_minor,
    )


def lines_of(invoice: ipb.Invoice) -> list[tuple[str, str, int]]:
    return [
        (Kind.Name(line.kind).removeprefix("KIND_"), line.quantity.value, line.amount.amount_minor)
        for line in invoice.lines
    ]

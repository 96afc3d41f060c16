"""The usage of a closed billing period, for its cycle invoice (billing_svc.invoices.ports
PeriodUsageReader): the usage read side's queries (read_repository) and quantities
(read_use_cases.meter_quantity, the aggregation GetUsageSummary uses), on the invoice's session.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.plan_reader import SqlPlanReader
from billing_svc.catalog.pricing import Percentage
from billing_svc.catalog.repository import SqlMeterRepository
from billing_svc.invoices.domain import UsageBasis
from billing_svc.invoices.usage_lines import ChargeUsage, PeriodUsage, RecordedUsage
from billing_svc.usage.read_repository import SqlUsageReader
from billing_svc.usage.read_use_cases import NO_RECORDS, meter_quantity


class SqlPeriodUsage:
    def __init__(self, session: AsyncSession):
        self._usage = SqlUsageReader(session)
        self._meters = SqlMeterRepository(session)
        self._plans = SqlPlanReader(session)

    async def period_usage(self, account_id: str, basis: UsageBasis) -> PeriodUsage:
        plan = await self._plans.version(basis.plan_id, basis.plan_version)
        if plan is None:  # plan versions are never deleted; a missing one is corrupt data
            raise LookupError(f"plan {basis.plan_id} version {basis.plan_version} is missing")
        start, end = basis.period_start, basis.period_end
        totals = await self._usage.period_totals(account_id, start, end)
        charged = {charge.meter_id for charge in plan.terms.metered_charges}
        meters = await self._meters.get_many(charged)
        charges = []
        for charge in plan.terms.metered_charges:
            meter = meters[charge.meter_id]
            meter_totals = totals.get(meter.id, NO_RECORDS)
            quantity = await meter_quantity(self._usage, account_id, meter, meter_totals, start, end)
            transactions: tuple[Decimal, ...] = ()
            if isinstance(charge.price, Percentage):
                changes = await self._usage.changes(account_id, meter.id, start, end)
                transactions = tuple(units for _, units in changes)
            charges.append(ChargeUsage(meter, charge, quantity, transactions))
        # Records with their own price, on the meters the plan charges only: the one subscription
        # that charges a meter (billing_svc.subscriptions.meters) bills them, and no other
        # subscription of the account bills them again.
        priced = [
            meter_id
            for meter_id, found in totals.items()
            if meter_id in charged and found.record_count > found.plan_count
        ]
        recorded = tuple(
            RecordedUsage(meters[meter_id], totals[meter_id].recorded_units, totals[meter_id].recorded_amount)
            for meter_id in sorted(priced, key=lambda meter_id: meters[meter_id].code)
        )
        return PeriodUsage(plan.terms, tuple(charges), recorded)

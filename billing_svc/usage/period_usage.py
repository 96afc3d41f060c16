"""The usage of a closed billing period, for its cycle invoice (billing_svc.invoices.ports
PeriodUsageReader): the usage read side's queries (read_repository) and quantities
(read_use_cases.meter_quantity, the aggregation GetUsageSummary uses), on the invoice's session.

Records with their own `price_per_unit` are billed exactly once, by one subscription of the account:
- on a meter the invoicing subscription's plan charges, by it, over its whole period;
- on a meter another subscription charges, by that one while it is live (its own invoices);
- otherwise (no live subscription charges the meter: the seed's (service, units, unit price)
  records on a flat plan), by the account's oldest subscription (by start time, then id) live at
  the record's time. A subscription is live from its start time until it ended: canceled, its
  cancel time; canceled at the period end, that period's end; else open.

So the period [start, end) of subscription S bills such a record of meter m when its time is in S's
live time, after the live time of every older subscription (they all start before S, so that is one
cut: up to the latest end among them), and outside the live time of each other subscription whose
plan (or scheduled change) charges m: a few intervals, each totalled by period_totals. The other
subscriptions are read only when the period has own-price records on a meter the plan does not
charge, so a plain metered renewal reads nothing more.

What falls outside every subscription's live time (an account without a subscription, the days
before the first or between two) no subscription bills: a period invoice does
(`unsubscribed_recorded`), once, since it leaves out the periods of the account's earlier period
invoices that are not void.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.plan_reader import SqlPlanReader
from billing_svc.catalog.pricing import Percentage
from billing_svc.catalog.repository import SqlMeterRepository
from billing_svc.invoices.domain import UsageBasis
from billing_svc.invoices.usage_lines import ChargeUsage, PeriodUsage, RecordedUsage
from billing_svc.subscriptions.domain import State, Subscription
from billing_svc.subscriptions.repository import SqlSubscriptionRepository
from billing_svc.usage.read_ports import PeriodTotals
from billing_svc.usage.read_repository import SqlUsageReader
from billing_svc.usage.read_use_cases import NO_RECORDS, meter_quantity
from core.money import DECIMAL_CONTEXT as _C

_ZERO = Decimal(0)


class SqlPeriodUsage:
    def __init__(self, session: AsyncSession):
        self._usage = SqlUsageReader(session)
        self._meters = SqlMeterRepository(session)
        self._plans = SqlPlanReader(session)
        self._subscriptions = SqlSubscriptionRepository(session)

    async def period_usage(self, account_id: str, basis: UsageBasis, subscription_id: str) -> PeriodUsage:
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
        # Records with their own price on the meters the plan charges: over the whole period.
        recorded = {
            meter_id: (found.recorded_units, found.recorded_amount)
            for meter_id, found in totals.items()
            if meter_id in charged and _priced(found)
        }
        # On the meters it does not charge: where no other subscription bills them.
        uncharged = {
            meter_id for meter_id, found in totals.items() if meter_id not in charged and _priced(found)
        }
        if uncharged:
            recorded |= await self._uncharged(account_id, subscription_id, uncharged, start, end, totals)
        missing = set(recorded) - set(meters)
        if missing:
            meters |= await self._meters.get_many(missing)
        return PeriodUsage(
            plan.terms,
            tuple(charges),
            tuple(
                RecordedUsage(meters[meter_id], units, amount)
                for meter_id, (units, amount) in sorted(
                    recorded.items(), key=lambda pair: meters[pair[0]].code
                )
            ),
        )

    async def _uncharged(
        self,
        account_id: str,
        subscription_id: str,
        meter_ids: set[str],
        start: datetime,
        end: datetime,
        totals: dict[str, PeriodTotals],
    ) -> dict[str, tuple[Decimal, Decimal]]:
        """The own-price units and amounts of `meter_ids` (which this subscription's plan does not
        charge) that subscription `subscription_id` bills in [start, end), per meter."""
        subscriptions = await self._subscriptions.started_before(account_id, end)
        this = next((found for found in subscriptions if found.id == subscription_id), None)
        if this is None:  # the invoice's subscription is the account's; a missing one is corrupt data
            raise LookupError(f"subscription {subscription_id} of account {account_id} is missing")
        older_end = max(
            (_live_end(other) or end for other in subscriptions if _order(other) < _order(this)),
            default=start,
        )
        low = max(start, this.start_time, older_end)
        high = min(end, _live_end(this) or end)
        charging: dict[str, list[tuple[datetime, datetime]]] = {}
        for other in subscriptions:
            if other.id == this.id or not low < high:
                continue
            for meter_id in meter_ids & await self._meters_of(other):
                charging.setdefault(meter_id, []).append((other.start_time, _live_end(other) or end))
        found: dict[str, tuple[Decimal, Decimal]] = {}
        read: dict[tuple[datetime, datetime], dict[str, PeriodTotals]] = {(start, end): totals}
        for meter_id in sorted(meter_ids):
            units, amount = Decimal(0), Decimal(0)
            for interval in _without((low, high), charging.get(meter_id, ())):
                if interval not in read:
                    read[interval] = await self._usage.period_totals(account_id, *interval)
                part = read[interval].get(meter_id)
                if part is not None and _priced(part):
                    units, amount = units + part.recorded_units, amount + part.recorded_amount
            if units or amount:
                found[meter_id] = (units, amount)
        return found

    async def unsubscribed_recorded(
        self, account_id: str, start: datetime, end: datetime, billed: Sequence[tuple[datetime, datetime]]
    ) -> tuple[RecordedUsage, ...]:
        """For a period invoice: [start, end) less each subscription's live time and less `billed`,
        a few intervals, each totalled by period_totals."""
        subscriptions = await self._subscriptions.started_before(account_id, end)
        live = [(found.start_time, _live_end(found) or end) for found in subscriptions]
        units: dict[str, Decimal] = {}
        amounts: dict[str, Decimal] = {}
        for interval in _without((start, end), [*live, *billed]):
            for meter_id, part in (await self._usage.period_totals(account_id, *interval)).items():
                if _priced(part):
                    units[meter_id] = _C.add(units.get(meter_id, _ZERO), part.recorded_units)
                    amounts[meter_id] = _C.add(amounts.get(meter_id, _ZERO), part.recorded_amount)
        meters = await self._meters.get_many(set(units)) if units else {}
        return tuple(
            sorted(
                (RecordedUsage(meters[meter_id], units[meter_id], amounts[meter_id]) for meter_id in units),
                key=lambda usage: usage.meter.code,
            )
        )

    async def _meters_of(self, subscription: Subscription) -> set[str]:
        """The meters its plan charges, and those of the plan of a change scheduled on it."""
        versions = [(subscription.plan_id, subscription.plan_version)]
        if subscription.scheduled_change is not None:
            change = subscription.scheduled_change
            versions.append((change.plan_id, change.plan_version))
        meters: set[str] = set()
        for plan_id, version in versions:
            plan = await self._plans.version(plan_id, version)
            if plan is None:  # plan versions are never deleted; a missing one is corrupt data
                raise LookupError(f"plan {plan_id} version {version} is missing")
            meters |= {charge.meter_id for charge in plan.terms.metered_charges}
        return meters


def _priced(found: PeriodTotals) -> bool:
    """Whether some of the records have their own price."""
    return found.record_count > found.plan_count


def _order(subscription: Subscription) -> tuple[datetime, str]:
    return subscription.start_time, subscription.id


def _live_end(subscription: Subscription) -> datetime | None:
    """When it stopped being live: its cancel, or the end of the period it cancels at; None if open."""
    if subscription.state is State.CANCELED:
        return subscription.cancel_time or subscription.update_time
    if subscription.cancel_at_period_end:
        return subscription.current_period_end
    return None


def _without(
    interval: tuple[datetime, datetime], cuts: Iterable[tuple[datetime, datetime]]
) -> Sequence[tuple[datetime, datetime]]:
    """`interval` less the union of `cuts`, as disjoint intervals in order (empty ones left out)."""
    low, high = interval
    left: list[tuple[datetime, datetime]] = []
    for cut_low, cut_high in sorted(cuts):
        if cut_high <= low or cut_low >= high:
            continue
        if low < cut_low:
            left.append((low, cut_low))
        low = max(low, cut_high)
        if low >= high:
            return left
    if low < high:
        left.append((low, high))
    return left

"""Reading usage: listing an account's records, and summing up and pricing a range of them.

Both read one snapshot (platform.snapshots): a summary's records, meters, subscription, plan
and the account's clock are read in one transaction, so they agree with each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing_svc.catalog.domain import Aggregation, Meter, MeteredCharge, PlanVersion
from billing_svc.catalog.pricing import Percentage
from billing_svc.subscriptions.domain import State, Subscription
from billing_svc.subscriptions.use_cases import account_not_found
from billing_svc.usage import summary as priced
from billing_svc.usage.aggregation import weighted_quantity
from billing_svc.usage.domain import UsageRecord
from billing_svc.usage.read_ports import PeriodTotals, UsageReader, UsageReadUnitOfWork
from billing_svc.usage.summary import MeterUsage, UsageCharge, UsageSummary
from billing_svc.usage.tables import MAX_SERVICE
from core import ids
from core.clock import Clock
from core.errors import FailedPrecondition, InvalidArgument, Violations
from core.pagination import PageTokens
from core.principal import Caller

MAX_PROPERTY_FILTERS = 32
MAX_PROPERTY_KEY = 64
MAX_PROPERTY_VALUE = 256
# The states in which a subscription bills usage: its plan prices the summary.
PRICING_STATES = frozenset({State.TRIALING, State.ACTIVE, State.PAST_DUE})
_SUBSCRIPTIONS_READ = 100  # an account has a handful; more than this is not a billing setup


@dataclass(frozen=True)
class UsageReadDeps:
    new_reader: Callable[[], UsageReadUnitOfWork]  # one snapshot
    clock: Clock  # the wall clock: read_time
    page_tokens: PageTokens


@dataclass(frozen=True)
class UsagePage:
    records: list[UsageRecord]
    next_page_token: str


@dataclass(frozen=True)
class RecordFilter:
    service: str = ""
    start: datetime | None = None
    end: datetime | None = None
    properties: tuple[str, ...] = ()  # each `key=value`, as sent


def _require_account_id(caller: Caller, account_id: str) -> None:
    if not account_id:
        raise InvalidArgument.field("account_id", "is required")
    # The auth interceptor confines customers already (the proto's policy); this keeps the rule
    # true for any other caller of the use case.
    if caller.customer_account is not None and caller.customer_account != account_id:
        raise account_not_found(account_id, "account_id")


def _check_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidArgument.field("end_time", "must be after start_time")


def parse_property_filters(items: Sequence[str]) -> dict[str, str]:
    """`key=value` items as a mapping; INVALID_ARGUMENT naming `properties[i]` for a bad one."""
    violations = Violations()
    parsed: dict[str, str] = {}
    if len(items) > MAX_PROPERTY_FILTERS:
        violations.add("properties", f"must have at most {MAX_PROPERTY_FILTERS} items")
    for index, item in enumerate(items[:MAX_PROPERTY_FILTERS]):
        path = f"properties[{index}]"
        key, sep, value = item.partition("=")
        if not sep:
            violations.add(path, "must be key=value")
        elif not 1 <= len(key) <= MAX_PROPERTY_KEY:
            violations.add(path, f"key must be 1 to {MAX_PROPERTY_KEY} characters")
        elif '"' in key or "\\" in key or any(ord(char) < 32 for char in key):
            # No stored key has these (the JSON path of the filter could not name it exactly).
            violations.add(path, "key must not contain quotes, backslashes or control characters")
        elif len(value) > MAX_PROPERTY_VALUE:
            violations.add(path, f"value must be at most {MAX_PROPERTY_VALUE} characters")
        elif key in parsed and parsed[key] != value:
            violations.add(path, f"filters {key!r} a second time with another value")
        else:
            parsed[key] = value
    violations.raise_if_any()
    return parsed


async def list_usage_records(
    deps: UsageReadDeps,
    caller: Caller,
    account_id: str,
    *,
    filters: RecordFilter,
    size: int = 0,
    page_token: str = "",
) -> UsagePage:
    _require_account_id(caller, account_id)
    _check_range(filters.start, filters.end)
    properties = parse_property_filters(filters.properties)
    scope = {
        "account_id": account_id,
        "service": filters.service,
        "start": filters.start.isoformat() if filters.start else "",
        "end": filters.end.isoformat() if filters.end else "",
        "properties": sorted(properties.items()),
    }
    page = deps.page_tokens.keyset_page(size, page_token, scope)
    if len(account_id) > ids.MAX_LENGTH:
        raise account_not_found(account_id, "account_id")
    async with deps.new_reader() as uow:
        # An account that never existed is NOT_FOUND; a deleted one keeps its records, readable.
        if await uow.accounts.terms(account_id) is None:
            raise account_not_found(account_id, "account_id")
        if len(filters.service) > MAX_SERVICE:
            return UsagePage([], "")  # no record can have such a service
        rows = await uow.usage.records(
            account_id,
            service=filters.service or None,
            start=filters.start,
            end=filters.end,
            properties=properties,
            after=page.after,
            limit=page.fetch_limit,
        )
    shown, token = page.slice(rows, key=lambda record: (record.event_time, record.id))
    return UsagePage(shown, token)


def _check_summary_range(start: datetime | None, end: datetime | None) -> None:
    if start is None and end is not None:
        raise InvalidArgument.field("start_time", "is required with end_time")
    if end is None and start is not None:
        raise InvalidArgument.field("end_time", "is required with start_time")
    _check_range(start, end)


def _current(subscriptions: Sequence[Subscription], now: datetime) -> Subscription | None:
    """The subscription whose current period holds `now`, else the first that bills usage."""
    billing = [sub for sub in subscriptions if sub.state in PRICING_STATES]
    for sub in billing:
        if sub.current_period_start <= now < sub.current_period_end:
            return sub
    return billing[0] if billing else None


def _covering(subscriptions: Sequence[Subscription], start: datetime, end: datetime) -> Subscription | None:
    for sub in subscriptions:
        if (
            sub.state in PRICING_STATES
            and sub.current_period_start <= start
            and end <= sub.current_period_end
        ):
            return sub
    return None


async def meter_quantity(
    reader: UsageReader,
    account_id: str,
    meter: Meter,
    totals: PeriodTotals,
    start: datetime,
    end: datetime,
) -> Decimal:
    aggregation = meter.aggregation
    if aggregation is Aggregation.COUNT:
        return Decimal(totals.plan_count)
    if aggregation is Aggregation.SUM:
        return totals.plan_sum
    if aggregation is Aggregation.MAX:
        return totals.plan_max
    if aggregation is Aggregation.UNIQUE_COUNT:
        return Decimal(await reader.unique_count(account_id, meter.id, meter.property, start, end))
    if aggregation is Aggregation.LATEST:
        return await reader.latest_units(account_id, meter.id, start, end)
    level = await reader.level_before(account_id, meter.id, start)
    area = await reader.weighted_area(account_id, meter.id, start, end)
    return weighted_quantity(level, area, start, end)


async def _meter_usage(
    uow: UsageReadUnitOfWork,
    account_id: str,
    meter: Meter,
    totals: PeriodTotals,
    charges: Sequence[MeteredCharge],
    currency: str,
    start: datetime,
    end: datetime,
) -> MeterUsage:
    quantity = await meter_quantity(uow.usage, account_id, meter, totals, start, end)
    priced_charges: list[UsageCharge] = []
    for charge in charges:
        transactions: list[Decimal] = []
        if isinstance(charge.price, Percentage):
            transactions = [units for _, units in await uow.usage.changes(account_id, meter.id, start, end)]
        priced_charges.append(priced.plan_charge(meter, charge, quantity, transactions, currency))
    if totals.record_count > totals.plan_count:
        priced_charges.append(
            priced.recorded_charge(meter, totals.recorded_units, totals.recorded_amount, currency)
        )
    return MeterUsage(
        meter_id=meter.id,
        service=meter.code,
        aggregation=meter.aggregation,
        quantity=quantity,
        record_count=totals.record_count,
        charges=tuple(priced_charges),
    )


async def _current_period(
    uow: UsageReadUnitOfWork, account_id: str, subscriptions: Sequence[Subscription]
) -> tuple[datetime, datetime]:
    """The current billing period, by the account's clock (a test clock's frozen time, if any)."""
    now = (await uow.clocks.time_for(account_id)).now
    current = _current(subscriptions, now)
    if current is None:
        raise FailedPrecondition(
            "the account has no subscription in a billing period: give start_time and end_time",
            reason="NO_CURRENT_PERIOD",
            metadata={"field": "start_time", "account_id": account_id},
        )
    # From the start time in the first period, as its invoice bills it (billing_svc.subscriptions.work).
    return max(current.current_period_start, current.start_time), current.current_period_end


def _charges_by_meter(plan: PlanVersion | None) -> dict[str, list[MeteredCharge]]:
    found: dict[str, list[MeteredCharge]] = {}
    for charge in plan.terms.metered_charges if plan is not None else ():
        found.setdefault(charge.meter_id, []).append(charge)
    return found


NO_RECORDS = PeriodTotals(0, 0, Decimal(0), Decimal(0), Decimal(0), Decimal(0))


async def get_usage_summary(
    deps: UsageReadDeps,
    caller: Caller,
    account_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> UsageSummary:
    _require_account_id(caller, account_id)
    _check_summary_range(start, end)
    if len(account_id) > ids.MAX_LENGTH:
        raise account_not_found(account_id, "account_id")
    async with deps.new_reader() as uow:
        terms = await uow.accounts.terms(account_id)
        read_time = deps.clock.now()  # the snapshot was taken by the statement above
        if terms is None or not terms.live:
            raise account_not_found(account_id, "account_id")
        subscriptions = await uow.subscriptions.list(
            account_id=account_id, show_canceled=False, after=None, limit=_SUBSCRIPTIONS_READ
        )
        if start is None or end is None:
            start, end = await _current_period(uow, account_id, subscriptions)
        subscription = _covering(subscriptions, start, end)
        plan = None
        if subscription is not None:
            plan = await uow.plans.version(subscription.plan_id, subscription.plan_version)
        currency = plan.currency_code if plan is not None else terms.currency_code
        charges_by_meter = _charges_by_meter(plan)
        totals = await uow.usage.period_totals(account_id, start, end)
        meters = await uow.meters.get_many(set(totals) | set(charges_by_meter))
        usage = [
            await _meter_usage(
                uow,
                account_id,
                meter,
                totals.get(meter.id, NO_RECORDS),
                charges_by_meter.get(meter.id, ()),
                currency,
                start,
                end,
            )
            for meter in sorted(meters.values(), key=lambda meter: meter.code)
        ]
    return UsageSummary(
        account_id=account_id,
        start_time=start,
        end_time=end,
        subscription_id=subscription.id if subscription is not None else "",
        meters=tuple(usage),
        total=priced.summary_total(usage, currency, always=plan is not None),
        read_time=read_time,
    )

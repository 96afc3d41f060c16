"""SQL for reading usage records: listings, and what a meter's aggregation needs over a period.

PostgreSQL stores units as NUMERIC(38, 12), so COUNT, SUM and MAX (and the recorded prices'
sum of units x price, scale 24, still exact) are computed by the database, and only what the
other aggregations need is fetched: the number of distinct property values, the latest row,
the level before the period, and the weighted area of the changes inside it (also a SQL sum).
For the plan-priced records, COUNT, SUM, MAX, the level before and the weighted area read the
whole UTC hours of the range from the hourly rollup (usage_hourly) and only the partial hours at
each end from usage_records, so their cost follows the number of hours, not of events.
UNIQUE_COUNT (distinct values do not add up across hours) and LATEST (one indexed row) read raw
rows, as do the recorded-price records (a partial index holds them).
SQLite stores units as text, which its SUM would read as floats, so there the rows are fetched
and summed in Python (billing_svc.usage.aggregation). Either way the results are the same exact Decimals.

Reads only; it never commits. Every query leads with account_id and bounds event_time, so it
stays on the account's (and, once partitioned, the period's) part of the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Numeric,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.usage import aggregation
from billing_svc.usage.domain import UsageRecord
from billing_svc.usage.read_ports import PeriodTotals
from billing_svc.usage.tables import UsageHourlyRow, UsageRecordRow
from core.money import DECIMAL_CONTEXT
from core.pagination import Position, keyset_after

_ZERO = Decimal(0)
_EXACT = Numeric(asdecimal=True)
_C = DECIMAL_CONTEXT
_HOUR = timedelta(hours=1)
_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_domain(row: UsageRecordRow) -> UsageRecord:
    return UsageRecord(
        id=row.id,
        account_id=row.account_id,
        meter_id=row.meter_id,
        service=row.service,
        units=row.units,
        price_per_unit=row.price_per_unit,
        event_time=row.event_time,
        properties=dict(row.properties),
        event_id=row.event_id,
        create_time=row.create_time,
    )


def _in_period(account_id: str, start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(
        UsageRecordRow.account_id == account_id,
        UsageRecordRow.event_time >= start,
        UsageRecordRow.event_time < end,
    )


def _plan_priced(account_id: str, meter_id: str, start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(
        _in_period(account_id, start, end),
        UsageRecordRow.meter_id == meter_id,
        UsageRecordRow.price_per_unit.is_(None),
    )


class SqlUsageReader:
    def __init__(self, session: AsyncSession):
        self._session = session
        # Exact SQL arithmetic on units only where they are NUMERIC (see the module doc).
        self._exact_sql = session.get_bind().dialect.name == "postgresql"

    async def records(
        self,
        account_id: str,
        *,
        service: str | None,
        start: datetime | None,
        end: datetime | None,
        properties: Mapping[str, str],
        after: Position | None,
        limit: int,
    ) -> list[UsageRecord]:
        """Up to `limit` records in (event_time, id) order after `after`, matching every filter."""
        statement = select(UsageRecordRow).where(UsageRecordRow.account_id == account_id)
        if service is not None:
            statement = statement.where(UsageRecordRow.service == service)
        if start is not None:
            statement = statement.where(UsageRecordRow.event_time >= start)
        if end is not None:
            statement = statement.where(UsageRecordRow.event_time < end)
        for key, value in properties.items():
            statement = statement.where(UsageRecordRow.properties[key].as_string() == value)
        statement = keyset_after(statement, UsageRecordRow.event_time, UsageRecordRow.id, after)
        rows = (await self._session.scalars(statement.limit(limit))).all()
        return [_to_domain(row) for row in rows]

    async def period_totals(self, account_id: str, start: datetime, end: datetime) -> dict[str, PeriodTotals]:
        """Per meter with records in [start, end), by meter id."""
        if self._exact_sql:
            return await self._sql_totals(account_id, start, end)
        statement = select(
            UsageRecordRow.meter_id, UsageRecordRow.units, UsageRecordRow.price_per_unit
        ).where(_in_period(account_id, start, end))
        by_meter: dict[str, list[tuple[Decimal, Decimal | None]]] = {}
        for meter_id, units, price in (await self._session.execute(statement)).all():
            by_meter.setdefault(meter_id, []).append((units, price))
        return {meter_id: _python_totals(rows) for meter_id, rows in by_meter.items()}

    async def _sql_totals(self, account_id: str, start: datetime, end: datetime) -> dict[str, PeriodTotals]:
        """Three grouped reads in one statement (`_TOTALS`): the recorded-price records over the
        whole range (a partial index holds them), the plan-priced ones of the partial hours at each
        end, and the rollup's whole hours in between; added up per meter here."""
        first, last = _whole_hours(start, end)
        parameters = {"account_id": account_id, "start": start, "first": first, "last": last, "end": end}
        rows = (await self._session.execute(_TOTALS, parameters)).all()
        by_meter: dict[str, list[Any]] = {}
        for meter_id, plan_count, plan_sum, plan_max, recorded_count, recorded_units, amount in rows:
            totals = by_meter.setdefault(meter_id, [0, _ZERO, None, 0, _ZERO, _ZERO])
            totals[0] += int(plan_count)
            totals[1] = _C.add(totals[1], _decimal(plan_sum))
            if plan_max is not None:
                totals[2] = _decimal(plan_max) if totals[2] is None else max(totals[2], _decimal(plan_max))
            totals[3] += int(recorded_count)
            totals[4] = _C.add(totals[4], _decimal(recorded_units))
            totals[5] = _C.add(totals[5], _decimal(amount))
        return {
            meter_id: PeriodTotals(
                record_count=plan_count + recorded_count,
                plan_count=plan_count,
                plan_sum=plan_sum,
                plan_max=plan_max if plan_max is not None else _ZERO,
                recorded_units=recorded_units,
                recorded_amount=amount,
            )
            for meter_id, (
                plan_count,
                plan_sum,
                plan_max,
                recorded_count,
                recorded_units,
                amount,
            ) in by_meter.items()
        }

    async def unique_count(
        self, account_id: str, meter_id: str, property_name: str, start: datetime, end: datetime
    ) -> int:
        """Distinct values of `property_name` among the plan-priced records (those that have it)."""
        value = UsageRecordRow.properties[property_name].as_string()
        where = and_(_plan_priced(account_id, meter_id, start, end), value.is_not(None))
        return int(await self._session.scalar(select(func.count(value.distinct())).where(where)) or 0)

    async def latest_units(self, account_id: str, meter_id: str, start: datetime, end: datetime) -> Decimal:
        """The units of the plan-priced record with the latest (event_time, id); 0 without any."""
        statement = (
            select(UsageRecordRow.units)
            .where(_plan_priced(account_id, meter_id, start, end))
            .order_by(UsageRecordRow.event_time.desc(), UsageRecordRow.id.desc())
            .limit(1)
        )
        found = await self._session.scalar(statement)
        return found if found is not None else _ZERO

    async def level_before(self, account_id: str, meter_id: str, start: datetime) -> Decimal:
        """The sum of the plan-priced records' units before `start`: a WEIGHTED_SUM's level there.
        On PostgreSQL the rollup's hours before start's hour, plus the raw rows of that hour."""
        if not self._exact_sql:
            where = and_(
                UsageRecordRow.account_id == account_id,
                UsageRecordRow.meter_id == meter_id,
                UsageRecordRow.event_time < start,
                UsageRecordRow.price_per_unit.is_(None),
            )
            return aggregation.total(
                (await self._session.scalars(select(UsageRecordRow.units).where(where))).all()
            )
        hour = _hour_floor(start)
        rolled = select(func.sum(UsageHourlyRow.units_sum, type_=_EXACT)).where(
            UsageHourlyRow.account_id == account_id,
            UsageHourlyRow.meter_id == meter_id,
            UsageHourlyRow.hour < hour,
        )
        raw = select(func.sum(UsageRecordRow.units, type_=_EXACT)).where(
            _plan_priced(account_id, meter_id, hour, start)
        )
        rows = (await self._session.execute(union_all(rolled, raw))).scalars().all()
        return aggregation.total(_decimal(value) for value in rows)

    async def weighted_area(self, account_id: str, meter_id: str, start: datetime, end: datetime) -> Fraction:
        """The sum of units x (end - event_time), in unit-seconds, over the plan-priced records in
        [start, end) (billing_svc.usage.aggregation.weighted_area). PostgreSQL sums it: extract()
        of an interval is an exact NUMERIC there, to the microsecond; whole hours come from the
        rollup as sum(units) x end - sum(units x event_time), in microseconds."""
        if not self._exact_sql:
            return aggregation.weighted_area(await self.changes(account_id, meter_id, start, end), end)
        first, last = _whole_hours(start, end)
        held = func.extract("epoch", literal(end, UsageRecordRow.event_time.type) - UsageRecordRow.event_time)
        area = Fraction(0)
        for low, high in ((start, first), (last, end)):
            if low < high:
                statement = select(func.sum(UsageRecordRow.units * held, type_=_EXACT)).where(
                    _plan_priced(account_id, meter_id, low, high)
                )
                area += Fraction(_decimal(await self._session.scalar(statement)))
        if first < last:
            hourly = select(
                func.sum(UsageHourlyRow.units_sum, type_=_EXACT),
                func.sum(UsageHourlyRow.units_time_sum, type_=_EXACT),
            ).where(_hours(account_id, first, last), UsageHourlyRow.meter_id == meter_id)
            units_sum, units_time_sum = (await self._session.execute(hourly)).one()
            end_us = (end - _EPOCH) // _MICROSECOND
            area += Fraction(
                Fraction(_decimal(units_sum)) * end_us - Fraction(_decimal(units_time_sum)), 10**6
            )
        return area

    async def changes(
        self, account_id: str, meter_id: str, start: datetime, end: datetime
    ) -> list[tuple[datetime, Decimal]]:
        """(event_time, units) of the plan-priced records in [start, end), in (event_time, id) order."""
        statement = (
            select(UsageRecordRow.event_time, UsageRecordRow.units)
            .where(_plan_priced(account_id, meter_id, start, end))
            .order_by(UsageRecordRow.event_time, UsageRecordRow.id)
        )
        return [(time, units) for time, units in (await self._session.execute(statement)).all()]


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _totals_statement() -> CompoundSelect[Any]:
    """`_sql_totals`' statement, built once (parameters account_id, start, first, last, end): a
    range that is empty ([start, first) when the period starts on the hour, [first, last) when
    no whole hour fits) matches no row, so one statement serves every period."""
    records, hourly = UsageRecordRow, UsageHourlyRow
    units = records.units

    def raw(low: str, high: str) -> ColumnElement[bool]:
        return and_(
            records.account_id == bindparam("account_id"),
            records.event_time >= bindparam(low),
            records.event_time < bindparam(high),
        )

    recorded = (
        select(
            records.meter_id,
            literal(0).label("plan_count"),
            literal(None, _EXACT).label("plan_sum"),
            literal(None, _EXACT).label("plan_max"),
            func.count().label("recorded_count"),
            func.sum(units, type_=_EXACT).label("recorded_units"),
            func.sum(units * records.price_per_unit, type_=_EXACT).label("amount"),
        )
        .where(raw("start", "end"), records.price_per_unit.is_not(None))
        .group_by(records.meter_id)
    )
    edges = (
        select(
            records.meter_id,
            func.count(),
            func.sum(units, type_=_EXACT),
            func.max(units, type_=_EXACT),
            literal(0),
            literal(None, _EXACT),
            literal(None, _EXACT),
        )
        .where(or_(raw("start", "first"), raw("last", "end")), records.price_per_unit.is_(None))
        .group_by(records.meter_id)
    )
    hours = (
        select(
            hourly.meter_id,
            func.sum(hourly.record_count),
            func.sum(hourly.units_sum, type_=_EXACT),
            func.max(hourly.units_max, type_=_EXACT),
            literal(0),
            literal(None, _EXACT),
            literal(None, _EXACT),
        )
        .where(
            hourly.account_id == bindparam("account_id"),
            hourly.hour >= bindparam("first"),
            hourly.hour < bindparam("last"),
        )
        .group_by(hourly.meter_id)
    )
    return union_all(recorded, edges, hours)


_TOTALS = _totals_statement()


def _whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC hours inside [start, end), as [first, last): start rounded up, end down.
    When no whole hour fits, (end, end): no hours, and [start, end) is all one raw edge."""
    first = _hour_floor(start)
    if first < start:
        first += _HOUR
    last = _hour_floor(end)
    if last <= first:
        return end, end
    return first, last


def _hours(account_id: str, first: datetime, last: datetime) -> ColumnElement[bool]:
    return and_(
        UsageHourlyRow.account_id == account_id,
        UsageHourlyRow.hour >= first,
        UsageHourlyRow.hour < last,
    )


def _decimal(value: Any) -> Decimal:
    """A NUMERIC aggregate as an exact Decimal (NULL, for no rows, is 0)."""
    if value is None:
        return _ZERO
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _python_totals(rows: Sequence[tuple[Decimal, Decimal | None]]) -> PeriodTotals:
    planned = [units for units, price in rows if price is None]
    recorded = [(units, price) for units, price in rows if price is not None]
    return PeriodTotals(
        record_count=len(rows),
        plan_count=len(planned),
        plan_sum=aggregation.total(planned),
        plan_max=max(planned, default=_ZERO),
        recorded_units=aggregation.total(units for units, _ in recorded),
        recorded_amount=aggregation.total(
            DECIMAL_CONTEXT.multiply(units, price) for units, price in recorded
        ),
    )

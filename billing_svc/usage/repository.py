"""SQL for usage records: the adapter for `billing_svc.usage.ports.UsageRepository`. It reads and
writes through the unit of work's session and never commits.

Recording is set-based. On PostgreSQL one statement stores a whole batch: the events travel as
one JSON document (a list per event), `json_array_elements` turns it into rows, the event ids are
claimed with INSERT ... ON CONFLICT DO NOTHING, only the records whose id was claimed are
inserted, and those without their own price are added to the hourly rollup (usage_hourly: an
upsert per account, meter and hour, in key order so two batches on the same hours wait in one
order). A concurrent transaction holding one of the ids makes the statement wait for it to end
(then the id is taken, or free again if it rolled back), so concurrent duplicates store one row.
SQLite, whose writers queue behind BEGIN IMMEDIATE, does the same in three executemany-sized
steps, and keeps no rollup (its reads add up raw rows).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, tuple_
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billing_svc.invoices.domain import InvoiceStatus
from billing_svc.invoices.tables import InvoiceRow
from billing_svc.usage.domain import EarlierUsage, NewUsage, UsageRecord
from billing_svc.usage.tables import UsageEventIdRow, UsageRecordRow

PURGE_BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_POSTGRES_INSERT = text(
    """
    WITH input AS (
        SELECT e->>0 AS account_id, e->>1 AS event_id, e->>2 AS id,
               timestamptz 'epoch' + CAST(e->>3 AS bigint) * interval '1 microsecond' AS event_time,
               e->>4 AS fingerprint, e->>5 AS meter_id, e->>6 AS service,
               CAST(e->>7 AS numeric) AS units, CAST(e->>8 AS numeric) AS price, e->9 AS properties,
               CAST(:create_time AS timestamptz) AS create_time
        FROM json_array_elements(CAST(:rows AS json)) AS e
    ),
    claimed AS (
        INSERT INTO usage_event_ids (account_id, event_id, record_id, event_time, fingerprint, create_time)
        SELECT account_id, event_id, id, event_time, fingerprint, create_time FROM input
        ON CONFLICT DO NOTHING
        RETURNING record_id
    ),
    stored AS (
        INSERT INTO usage_records (account_id, event_time, id, meter_id, service, units, price_per_unit,
                                   properties, event_id, create_time)
        SELECT input.account_id, input.event_time, input.id, input.meter_id, input.service, input.units,
               input.price, CAST(input.properties AS json), input.event_id, input.create_time
        FROM input JOIN claimed ON claimed.record_id = input.id
        RETURNING id, account_id, meter_id, event_time, units, price_per_unit
    ),
    rolled AS (
        INSERT INTO usage_hourly (account_id, meter_id, hour, record_count, units_sum, units_max,
                                  units_time_sum)
        SELECT account_id, meter_id, date_trunc('hour', event_time, 'UTC'), count(*), sum(units),
               max(units), sum(units * extract(epoch FROM event_time) * 1000000)
        FROM stored
        WHERE price_per_unit IS NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (account_id, meter_id, hour) DO UPDATE SET
            record_count = usage_hourly.record_count + excluded.record_count,
            units_sum = usage_hourly.units_sum + excluded.units_sum,
            units_max = GREATEST(usage_hourly.units_max, excluded.units_max),
            units_time_sum = usage_hourly.units_time_sum + excluded.units_time_sum
    )
    SELECT id FROM stored
    """
)

_REBUILD_ROLLUP = (
    text("DELETE FROM usage_hourly WHERE account_id = :account_id"),
    text(
        """
        INSERT INTO usage_hourly (account_id, meter_id, hour, record_count, units_sum, units_max,
                                  units_time_sum)
        SELECT account_id, meter_id, date_trunc('hour', event_time, 'UTC'), count(*), sum(units),
               max(units), sum(units * extract(epoch FROM event_time) * 1000000)
        FROM usage_records
        WHERE account_id = :account_id AND price_per_unit IS NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        """
    ),
)


async def rebuild_rollup(connection: AsyncConnection, account_id: str) -> None:
    """Recompute an account's hourly rollup from its records (PostgreSQL; nothing on SQLite): for
    records written past the ingestion (imports, tests). The caller commits."""
    if connection.dialect.name != "postgresql":
        return
    for statement in _REBUILD_ROLLUP:
        await connection.execute(statement, {"account_id": account_id})


# Property keys sorted, as the statement's text[] parameter had them before it became JSON.
_ROWS_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _record_columns(record: UsageRecord) -> dict[str, Any]:
    return {
        "account_id": record.account_id,
        "event_time": record.event_time,
        "id": record.id,
        "meter_id": record.meter_id,
        "service": record.service,
        "units": record.units,
        "price_per_unit": record.price_per_unit,
        "properties": dict(record.properties),
        "event_id": record.event_id,
        "create_time": record.create_time,
    }


def _event_id_columns(event: NewUsage) -> dict[str, Any]:
    record = event.record
    return {
        "account_id": record.account_id,
        "event_id": record.event_id,
        "record_id": record.id,
        "event_time": record.event_time,
        "fingerprint": event.fingerprint,
        "create_time": record.create_time,
    }


def to_domain(row: UsageRecordRow) -> UsageRecord:
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


class SqlUsageRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def insert_new(self, events: Sequence[NewUsage]) -> list[EarlierUsage | None]:
        """Store the events whose (account, event id) is free; per event, in order, None when it
        was stored now, else what the id already holds. The events' keys must be distinct, and their
        create_time one (the batch's)."""
        if not events:
            return []
        # In key order: two batches sharing keys then wait on each other in one order, never in a
        # cycle (a deadlock) when each holds a key the other wants.
        ordered = sorted(events, key=lambda event: (event.record.account_id, event.record.event_id))
        if self._session.get_bind().dialect.name == "postgresql":
            stored = await self._insert_postgres(ordered)
        else:
            stored = await self._insert_sqlite(ordered)
        taken = [event.record for event in events if event.record.id not in stored]
        earlier = await self._earlier({(record.account_id, record.event_id) for record in taken})
        return [
            None
            if event.record.id in stored
            else earlier.get((event.record.account_id, event.record.event_id), _GONE)
            for event in events
        ]

    async def _insert_postgres(self, events: Sequence[NewUsage]) -> set[str]:
        records = [event.record for event in events]
        create_times = {r.create_time for r in records}
        if len(create_times) != 1:
            raise ValueError("the events of one insert_new share one create_time (the batch's)")
        (create_time,) = create_times
        # The rows travel as one JSON document, a list per event (json.dumps writes it at C speed;
        # asyncpg checks and encodes each element of an array parameter in turn): numbers as their
        # exact text, times as microseconds since 1970 (a bigint below 2**53 times one microsecond
        # is exact: every time before the year 2255), properties as an object.
        rows = [
            [
                r.account_id,
                r.event_id,
                r.id,
                (r.event_time - _EPOCH) // _MICROSECOND,
                event.fingerprint,
                r.meter_id,
                r.service,
                str(r.units),
                None if r.price_per_unit is None else str(r.price_per_unit),
                dict(r.properties),
            ]
            for event in events
            for r in (event.record,)
        ]
        parameters = {"rows": _ROWS_JSON.encode(rows), "create_time": create_time}
        result = await self._session.execute(_POSTGRES_INSERT, parameters)
        return {row[0] for row in result}

    async def _insert_sqlite(self, events: Sequence[NewUsage]) -> set[str]:
        claim = sqlite_insert(UsageEventIdRow).on_conflict_do_nothing()
        await self._session.execute(claim, [_event_id_columns(event) for event in events])
        keys = [(event.record.account_id, event.record.event_id) for event in events]
        owners = await self._session.execute(
            select(UsageEventIdRow.record_id).where(
                tuple_(UsageEventIdRow.account_id, UsageEventIdRow.event_id).in_(keys)
            )
        )
        stored = set(owners.scalars()) & {event.record.id for event in events}
        rows = [_record_columns(event.record) for event in events if event.record.id in stored]
        if rows:
            await self._session.execute(insert(UsageRecordRow), rows)
        return stored

    async def _earlier(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], EarlierUsage]:
        """What the keys hold, with their records: one query."""
        if not keys:
            return {}
        statement = (
            select(
                UsageEventIdRow.account_id,
                UsageEventIdRow.event_id,
                UsageEventIdRow.fingerprint,
                UsageRecordRow,
            )
            .outerjoin(
                UsageRecordRow,
                (UsageRecordRow.account_id == UsageEventIdRow.account_id)
                & (UsageRecordRow.event_time == UsageEventIdRow.event_time)
                & (UsageRecordRow.id == UsageEventIdRow.record_id),
            )
            .where(tuple_(UsageEventIdRow.account_id, UsageEventIdRow.event_id).in_(sorted(keys)))
        )
        rows = await self._session.execute(statement)
        return {
            (account_id, event_id): EarlierUsage(fingerprint, to_domain(row) if row is not None else None)
            for account_id, event_id, fingerprint, row in rows
        }

    async def invoiced_until(self, account_id: str) -> datetime | None:
        billed = InvoiceRow.status.not_in((InvoiceStatus.DRAFT.value, InvoiceStatus.VOID.value))
        statement = select(func.max(InvoiceRow.usage_period_end)).where(
            InvoiceRow.account_id == account_id, InvoiceRow.usage_period_end.is_not(None), billed
        )
        found: datetime | None = await self._session.scalar(statement)
        return found

    async def purge_event_ids(self, before: datetime, *, limit: int = PURGE_BATCH) -> int:
        """Delete up to `limit` event ids stored before `before`; how many went. Their records stay."""
        batch = (
            select(UsageEventIdRow.account_id, UsageEventIdRow.event_id)
            .where(UsageEventIdRow.create_time < before)
            .limit(limit)
        )
        result = await self._session.execute(
            delete(UsageEventIdRow)
            .where(tuple_(UsageEventIdRow.account_id, UsageEventIdRow.event_id).in_(batch.scalar_subquery()))
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0))


# An id row whose record cannot be found can only be one that vanished between the two statements
# (purged at that very moment): the event is treated as stored before, with nothing to show.
_GONE = EarlierUsage(fingerprint="", record=None)

"""SQL for meters: the adapter for `billing_svc.catalog.ports.MeterRepository`. It reads and writes
through the unit of work's session and never commits."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.catalog.domain import Aggregation, Meter
from billing_svc.catalog.tables import MeterRow
from core import ids
from core.errors import AlreadyExists
from core.pagination import keyset_after


def code_taken(kind: str, reason: str, code: str) -> AlreadyExists:
    return AlreadyExists(
        f"another {kind} already has the code {code!r}",
        reason=reason,
        metadata={"field": f"{kind}.code", "code": code},
    )


@contextmanager
def unique_code(table: str, error: AlreadyExists) -> Iterator[None]:
    """`error` from the table's unique code constraint: the last word when two creates race."""
    try:
        yield
    except IntegrityError as exc:
        message = str(exc.orig)
        if f"uq_{table}_code" in message or f"{table}.code" in message:
            raise error from exc
        raise


def meter_from_row(row: MeterRow | Row[Any]) -> Meter:
    return Meter(
        id=row.id,
        code=row.code,
        display_name=row.display_name,
        unit_label=row.unit_label,
        aggregation=Aggregation(row.aggregation),
        property=row.property,
        create_time=row.create_time,
        update_time=row.update_time,
        archive_time=row.archive_time,
        revision=row.revision,
    )


def _columns(meter: Meter) -> dict[str, Any]:
    """Every column but the id, as written by add() and save()."""
    return {
        "code": meter.code,
        "display_name": meter.display_name,
        "unit_label": meter.unit_label,
        "aggregation": meter.aggregation.value,
        "property": meter.property,
        "create_time": meter.create_time,
        "update_time": meter.update_time,
        "archive_time": meter.archive_time,
        "revision": meter.revision,
    }


_METER_TABLE = cast(Table, MeterRow.__table__)
# get_many's, built once: Core rows, no ORM object made for a read.
_METERS = select(_METER_TABLE).where(_METER_TABLE.c.id.in_(bindparam("ids", expanding=True)))


class SqlMeterRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def get(self, meter_id: str, *, for_update: bool = False) -> Meter | None:
        if len(meter_id) > ids.MAX_LENGTH:
            return None  # no such id can exist; the database need not be asked
        row = await self._session.get(MeterRow, meter_id, with_for_update=for_update)
        return meter_from_row(row) if row is not None else None

    async def get_many(self, meter_ids: Collection[str]) -> dict[str, Meter]:
        wanted = [meter_id for meter_id in set(meter_ids) if len(meter_id) <= ids.MAX_LENGTH]
        if not wanted:
            return {}
        rows = (await self._session.execute(_METERS, {"ids": wanted})).all()
        return {row.id: meter_from_row(row) for row in rows}

    async def add(self, meter: Meter) -> None:
        self._session.add(MeterRow(id=meter.id, **_columns(meter)))
        with unique_code("meters", code_taken("meter", "METER_CODE_TAKEN", meter.code)):
            await self._session.flush()

    async def save(self, meter: Meter) -> None:
        # One UPDATE, without reading the row again: the use case read (and locked) it already.
        statement = (
            update(MeterRow)
            .where(MeterRow.id == meter.id)
            .values(**_columns(meter))
            .execution_options(synchronize_session=False)
        )
        result = await self._session.execute(statement)
        if int(getattr(result, "rowcount", 0)) != 1:
            raise LookupError(meter.id)

    async def list(
        self, *, show_archived: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[Meter]:
        statement = keyset_after(select(MeterRow), MeterRow.create_time, MeterRow.id, after).limit(limit)
        if not show_archived:
            statement = statement.where(MeterRow.archive_time.is_(None))
        rows = (await self._session.execute(statement)).scalars().all()
        return [meter_from_row(row) for row in rows]

"""Monthly partitions of `usage_records` on PostgreSQL: made ahead of time, detached for archiving.

`usage_records` is partitioned by RANGE (event_time), one partition per calendar month (UTC),
named `usage_records_yYYYYmMM`, plus a DEFAULT partition that catches an event no monthly
partition covers (so an insert never fails for want of one). Events are accepted at most the
late window (72 h) back and a few minutes ahead, so partitions from three months back to three
ahead, kept up by `ensure_partitions` at start-up and daily after (PartitionKeeper), leave the
DEFAULT partition empty in practice.

A monthly partition cannot be created while the DEFAULT partition holds rows of its range
(PostgreSQL refuses the overlap): such a month is skipped and logged, for an operator to move
the rows. Archiving: `detach_partitions_before` detaches the monthly partitions older than a
month; each becomes a plain table (same name) to dump and drop, and is no longer read by
queries of `usage_records`; the hourly rollup (usage_hourly) loses those months' hours too.
Their event ids stay in `usage_event_ids` until the purge.

SQLite keeps one plain table; every function here does nothing there.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("tally.usage")

TABLE = "usage_records"
DEFAULT_PARTITION = f"{TABLE}_default"
MONTHS_BEHIND = 3
_NAME = re.compile(rf"^{TABLE}_y(\d{{4}})m(\d{{2}})$")


def month_start(moment: datetime, offset: int = 0) -> datetime:
    """The first instant (UTC) of the month `offset` months after the one holding `moment`."""
    moment = moment.astimezone(UTC)
    index = moment.year * 12 + (moment.month - 1) + offset
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"{TABLE}_y{month.year:04d}m{month.month:02d}"


def default_partition_ddl() -> str:
    return f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT"


def month_partition_ddl(month: datetime) -> str:
    """The CREATE statement of the partition of `month`'s month (its bounds are UTC instants)."""
    start, end = month_start(month), month_start(month, 1)
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(start)} PARTITION OF {TABLE}"
        f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


def is_partition(table_name: str) -> bool:
    """True for the partitions of usage_records, which no model declares (the schema check skips them)."""
    return table_name == DEFAULT_PARTITION or _NAME.match(table_name) is not None


async def _partitions(connection: AsyncConnection) -> set[str]:
    rows = await connection.execute(
        text(
            "SELECT child.relname FROM pg_inherits"
            " JOIN pg_class child ON child.oid = pg_inherits.inhrelid"
            " JOIN pg_class parent ON parent.oid = pg_inherits.inhparent"
            " WHERE parent.relname = :table"
        ),
        {"table": TABLE},
    )
    return {row[0] for row in rows}


async def ensure_partitions(
    connection: AsyncConnection, now: datetime, months_ahead: int = 3, months_behind: int = MONTHS_BEHIND
) -> list[str]:
    """Create the DEFAULT partition and the monthly ones from `months_behind` before `now`'s month
    to `months_ahead` after it, those that do not exist yet; the names of those made. Idempotent,
    and safe to run on several replicas at once (a lost race is the partition existing). The
    caller commits."""
    if connection.dialect.name != "postgresql":
        return []
    existing = await _partitions(connection)
    made: list[str] = []
    if DEFAULT_PARTITION not in existing:
        await connection.execute(text(default_partition_ddl()))
        made.append(DEFAULT_PARTITION)
    for offset in range(-months_behind, months_ahead + 1):
        start = month_start(now, offset)
        name = partition_name(start)
        if name in existing:
            continue
        # A savepoint: a month refused (rows of it in DEFAULT, or made meanwhile by another
        # replica) must not abort the other months.
        savepoint = await connection.begin_nested()
        try:
            await connection.execute(text(month_partition_ddl(start)))
        except Exception as exc:
            await savepoint.rollback()
            log.warning("could not create usage partition %s: %s", name, exc)
            continue
        await savepoint.commit()
        made.append(name)
    return made


async def detach_partitions_before(connection: AsyncConnection, month: datetime) -> list[str]:
    """Detach every monthly partition of usage_records that ends at or before the start of
    `month`'s month; their names. Each stays a plain table of the same name, out of the
    partitioned table (queries of usage_records no longer see it): dump it, then drop it.
    The hourly rollup's hours of those months are deleted with it, in the same transaction, so
    that a summary never counts records it cannot read (the rollup can be rebuilt from the
    dumped rows). Run it only for months that were invoiced. The caller commits."""
    if connection.dialect.name != "postgresql":
        return []
    cutoff = month_start(month)
    detached = []
    for name in sorted(await _partitions(connection)):
        match = _NAME.match(name)
        if match is None:
            continue
        start = datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)
        if month_start(start, 1) <= cutoff:
            await connection.execute(text(f"ALTER TABLE {TABLE} DETACH PARTITION {name}"))
            await connection.execute(
                text("DELETE FROM usage_hourly WHERE hour >= :start AND hour < :end"),
                {"start": start, "end": month_start(start, 1)},
            )
            detached.append(name)
    return detached

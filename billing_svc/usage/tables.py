"""The usage tables: usage records, and the event ids that make recording them exactly-once.

`usage_records` holds one row per stored event. On PostgreSQL it is partitioned by range of
`event_time` (one partition per month, made ahead of time, old ones detachable; see
billing_svc.usage.partitions); SQLite keeps one table. Its primary key leads with account_id
and holds the partition key, as PostgreSQL requires of a partitioned table's unique keys.

`usage_event_ids` is the dedup key: (account_id, event_id), unique, not partitioned by time, so a
retry months of partitions later is still recognised, however `usage_records` is partitioned.
It points at its record (record_id and event_time find the row in its partition) and keeps the
fingerprint of the event's content, to tell a replay from a reused id. Rows are kept at least
EVENT_ID_RETENTION (35 days) after they were stored.

`usage_hourly` is a rollup of the plan-priced records (those without price_per_unit) per account,
meter and UTC hour, kept on PostgreSQL only, in the transaction that stores them
(billing_svc.usage.repository): their count, sum and largest units, and the sum of units x
event_time in epoch microseconds, from which a WEIGHTED_SUM's area over whole hours follows
(area to `end` = sum(units) x end - sum(units x t)). Events are never updated or deleted
(corrections are new events), so it only ever grows. A summary reads whole hours from it and
the partial hours at each end from `usage_records` (billing_svc.usage.read_repository). SQLite,
the small-scale embedded default, has the table but leaves it empty and reads raw rows.

Every key and index leads with account_id, so the tables can be distributed by account.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TEXT, Numeric, TypeDecorator, TypeEngine

from core import ids
from core.db import Base, UtcDateTime

EVENT_ID_RETENTION = timedelta(days=35)
MAX_EVENT_ID = 128
MAX_SERVICE = 64
FINGERPRINT_LENGTH = 64  # sha256, hex
UNITS_SCALE = 12  # decimal places of units and unit prices


class ExactDecimal(TypeDecorator[Decimal]):
    """An exact decimal: NUMERIC(38, 12) on PostgreSQL (so SQL can sum it exactly), its plain text
    on SQLite (whose NUMERIC is a float). Always a Decimal in Python. On SQLite, aggregate in
    Python, never with SQL's SUM."""

    impl = Numeric(38, UNITS_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(TEXT())
        return dialect.type_descriptor(Numeric(38, UNITS_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"ExactDecimal takes a Decimal, not {type(value).__name__}")
        return format(value, "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UsageRecordRow(Base):
    __tablename__ = "usage_records"

    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    event_time: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)  # usg_, time-ordered
    meter_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    service: Mapped[str] = mapped_column(String(MAX_SERVICE))  # the meter's code when stored
    units: Mapped[Decimal] = mapped_column(ExactDecimal)
    price_per_unit: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    properties: Mapped[dict[str, Any]] = mapped_column(JSON)
    event_id: Mapped[str] = mapped_column(String(MAX_EVENT_ID))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        # Aggregation per account, meter and period.
        Index("ix_usage_records_account_meter_time", "account_id", "meter_id", "event_time"),
        # The records with their own price, which the rollup leaves out: a summary reads them raw.
        Index(
            "ix_usage_records_account_time_recorded",
            "account_id",
            "event_time",
            postgresql_where=text("price_per_unit IS NOT NULL"),
            sqlite_where=text("price_per_unit IS NOT NULL"),
        ),
        {"postgresql_partition_by": "RANGE (event_time)"},
    )


class UsageEventIdRow(Base):
    __tablename__ = "usage_event_ids"

    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(MAX_EVENT_ID), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    event_time: Mapped[datetime] = mapped_column(UtcDateTime)
    fingerprint: Mapped[str] = mapped_column(String(FINGERPRINT_LENGTH))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)  # for the purge


class UsageHourlyRow(Base):
    """The plan-priced records of one account, meter and UTC hour, added up (see the module doc)."""

    __tablename__ = "usage_hourly"

    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    meter_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)  # the hour's start
    record_count: Mapped[int] = mapped_column(BigInteger)
    units_sum: Mapped[Decimal] = mapped_column(ExactDecimal)
    units_max: Mapped[Decimal] = mapped_column(ExactDecimal)
    # sum of units x event_time (epoch microseconds): up to 26 + 16 integer digits, so unbounded.
    units_time_sum: Mapped[Decimal] = mapped_column(Numeric(asdecimal=True))

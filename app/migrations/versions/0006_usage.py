"""usage: usage records (monthly partitions on PostgreSQL), their event ids, and the hourly rollup

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from billing_svc.usage import partitions
from billing_svc.usage.tables import ExactDecimal
from core.clock import SystemClock
from core.db import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    partitioned: dict[str, Any] = {"postgresql_partition_by": "RANGE (event_time)"} if postgres else {}
    op.create_table(
        "usage_records",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("event_time", UtcDateTime(), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("meter_id", sa.String(length=40), nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("units", ExactDecimal(), nullable=False),
        sa.Column("price_per_unit", ExactDecimal(), nullable=True),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "event_time", "id", name=op.f("pk_usage_records")),
        **partitioned,
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_records_account_meter_time", ["account_id", "meter_id", "event_time"], unique=False
        )
        batch_op.create_index(
            "ix_usage_records_account_time_recorded",
            ["account_id", "event_time"],
            unique=False,
            postgresql_where=sa.text("price_per_unit IS NOT NULL"),
            sqlite_where=sa.text("price_per_unit IS NOT NULL"),
        )
    if postgres:
        # Three months back to three ahead of the day of the migration; `tally serve` keeps
        # them coming (billing_svc.usage.partitions.ensure_partitions).
        now = SystemClock().now()
        op.execute(partitions.default_partition_ddl())
        for offset in range(-partitions.MONTHS_BEHIND, 4):
            op.execute(partitions.month_partition_ddl(partitions.month_start(now, offset)))

    op.create_table(
        "usage_event_ids",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("record_id", sa.String(length=40), nullable=False),
        sa.Column("event_time", UtcDateTime(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "event_id", name=op.f("pk_usage_event_ids")),
    )
    with op.batch_alter_table("usage_event_ids", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_event_ids_create_time"), ["create_time"], unique=False)

    # The hourly rollup of plan-priced records (billing_svc.usage.tables); filled on PostgreSQL only.
    op.create_table(
        "usage_hourly",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("meter_id", sa.String(length=40), nullable=False),
        sa.Column("hour", UtcDateTime(), nullable=False),
        sa.Column("record_count", sa.BigInteger(), nullable=False),
        sa.Column("units_sum", ExactDecimal(), nullable=False),
        sa.Column("units_max", ExactDecimal(), nullable=False),
        sa.Column("units_time_sum", sa.Numeric(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "meter_id", "hour", name=op.f("pk_usage_hourly")),
    )


def downgrade() -> None:
    op.drop_table("usage_hourly")
    with op.batch_alter_table("usage_event_ids", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_event_ids_create_time"))
    op.drop_table("usage_event_ids")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_account_time_recorded")
        batch_op.drop_index("ix_usage_records_account_meter_time")
    op.drop_table("usage_records")  # its partitions go with it

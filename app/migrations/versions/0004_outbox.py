"""the outbox: events written in the same transaction as their change

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_events",
        # An identity on PostgreSQL; on SQLite exactly INTEGER PRIMARY KEY AUTOINCREMENT
        # (a rowid alias that never reuses a value), see core/outbox.py.
        sa.Column(
            "position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), nullable=False
        ),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(40), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("position", name="pk_outbox_events"),
        sa.UniqueConstraint("id", name="uq_outbox_events_id"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("outbox_events")

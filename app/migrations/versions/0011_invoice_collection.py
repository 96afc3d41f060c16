"""invoice collection: the automatic collection schedule and its claim on invoices

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("collection_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("next_collection_time", UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column("collection_claimed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("collection_lease_until", UtcDateTime(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_invoices_next_collection_time"), ["next_collection_time"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_next_collection_time"))
        batch_op.drop_column("collection_lease_until")
        batch_op.drop_column("collection_claimed_by")
        batch_op.drop_column("next_collection_time")
        batch_op.drop_column("collection_attempts")

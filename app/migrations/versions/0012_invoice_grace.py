"""cycle invoices: the usage basis billed in arrears, and the grace period's finalize claim

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db import UtcDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage_plan_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("usage_plan_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("usage_period_start", UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column("usage_period_end", UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column("finalize_due_time", UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column("finalize_claimed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("finalize_lease_until", UtcDateTime(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_invoices_finalize_due_time"), ["finalize_due_time"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_finalize_due_time"))
        batch_op.drop_column("finalize_lease_until")
        batch_op.drop_column("finalize_claimed_by")
        batch_op.drop_column("finalize_due_time")
        batch_op.drop_column("usage_period_end")
        batch_op.drop_column("usage_period_start")
        batch_op.drop_column("usage_plan_version")
        batch_op.drop_column("usage_plan_id")

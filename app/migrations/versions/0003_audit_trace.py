"""audit events carry the trace id and the x-request-id of the call that made them

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Events written before this revision have neither; "" says so, as it does for CLI changes.
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("correlation_id", sa.String(128), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("correlation_id")
        batch.drop_column("trace_id")

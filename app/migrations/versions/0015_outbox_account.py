"""outbox events carry their account (indexed with the position), filled in for existing rows

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# core.outbox.account_of as of this revision, in each dialect's SQL: the resource itself when it
# is an account, else the payload's `account_id` when it is a string of at most 64 characters,
# else "". New rows get it from account_of when written.
_BACKFILL = {
    "postgresql": """
        UPDATE outbox_events SET account_id = CASE
            WHEN resource_type = 'account' THEN resource_id
            WHEN json_typeof(payload -> 'account_id') = 'string'
                 AND length(payload ->> 'account_id') <= 64 THEN payload ->> 'account_id'
            ELSE '' END
    """,
    "sqlite": """
        UPDATE outbox_events SET account_id = CASE
            WHEN resource_type = 'account' THEN resource_id
            WHEN json_type(payload, '$.account_id') = 'text'
                 AND length(json_extract(payload, '$.account_id')) <= 64
                 THEN json_extract(payload, '$.account_id')
            ELSE '' END
    """,
}


def upgrade() -> None:
    # A plain ADD COLUMN, not a batch (table copy) on SQLite: the copy would lose the position
    # column's AUTOINCREMENT, which keeps positions from being reused (core/outbox.py).
    op.add_column("outbox_events", sa.Column("account_id", sa.String(64), nullable=False, server_default=""))
    op.execute(_BACKFILL[op.get_bind().dialect.name])
    op.create_index("ix_outbox_events_account_id_position", "outbox_events", ["account_id", "position"])


def downgrade() -> None:
    op.drop_index("ix_outbox_events_account_id_position", table_name="outbox_events")
    # SQLite 3.35+ drops a column in place (no copy), as this project requires anyway.
    op.drop_column("outbox_events", "account_id")

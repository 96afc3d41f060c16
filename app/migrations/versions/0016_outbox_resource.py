"""outbox events indexed by resource (with the position), for ListEvents and watches of one resource

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_events_resource_id_position", "outbox_events", ["resource_id", "position"])


def downgrade() -> None:
    op.drop_index("ix_outbox_events_resource_id_position", table_name="outbox_events")

"""credit notes refunded on payments: credit_notes.refund_ids, payment_refunds.credit_note_id

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        # Every credit note before this revision refunded nothing on a payment.
        batch_op.add_column(sa.Column("refund_ids", sa.JSON(), server_default="[]", nullable=False))
    with op.batch_alter_table("payment_refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credit_note_id", sa.String(length=40), nullable=True))
        batch_op.create_index(
            "ux_payment_refunds_payment_id_credit_note_id", ["payment_id", "credit_note_id"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("payment_refunds", schema=None) as batch_op:
        batch_op.drop_index("ux_payment_refunds_payment_id_credit_note_id")
        batch_op.drop_column("credit_note_id")
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.drop_column("refund_ids")

"""credit notes: credit_notes, credit_note_lines, and the invoices' credited amounts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("currency_code", sa.String(length=3), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("pre_payment_minor", sa.BigInteger(), nullable=False),
        sa.Column("post_payment_minor", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=24), nullable=False),
        sa.Column("refund_method", sa.String(length=24), nullable=False),
        sa.Column("memo", sa.String(length=500), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_notes")),
        sa.UniqueConstraint("number", name=op.f("uq_credit_notes_number")),
    )
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_credit_notes_account_id_create_time_id", ["account_id", "create_time", "id"], unique=False
        )
        batch_op.create_index(
            "ix_credit_notes_invoice_id_create_time_id", ["invoice_id", "create_time", "id"], unique=False
        )
    op.create_table(
        "credit_note_lines",
        sa.Column("credit_note_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("description", sa.String(length=300), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("credit_note_id", "position", name=op.f("pk_credit_note_lines")),
        sa.UniqueConstraint("id", name=op.f("uq_credit_note_lines_id")),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("credited_pre_payment_minor", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("credited_post_payment_minor", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_column("credited_post_payment_minor")
        batch_op.drop_column("credited_pre_payment_minor")
    op.drop_table("credit_note_lines")
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_notes_invoice_id_create_time_id")
        batch_op.drop_index("ix_credit_notes_account_id_create_time_id")
    op.drop_table("credit_notes")

"""billing: meters, plans, subscriptions, pending invoice items, test clocks; account billing time zone

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meters",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("unit_label", sa.String(length=40), nullable=False),
        sa.Column("aggregation", sa.String(length=16), nullable=False),
        sa.Column("property", sa.String(length=64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("archive_time", UtcDateTime(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meters")),
        sa.UniqueConstraint("code", name=op.f("uq_meters_code")),
    )
    with op.batch_alter_table("meters", schema=None) as batch_op:
        batch_op.create_index("ix_meters_create_time_id", ["create_time", "id"], unique=False)

    op.create_table(
        "pending_invoice_items",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("fee_code", sa.String(length=80), nullable=False),
        sa.Column("description", sa.String(length=300), nullable=False),
        sa.Column("currency_code", sa.String(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.String(length=48), nullable=False),
        sa.Column("period_start", UtcDateTime(), nullable=False),
        sa.Column("period_end", UtcDateTime(), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("invoice_id", sa.String(length=40), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_invoice_items")),
    )
    with op.batch_alter_table("pending_invoice_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_pending_invoice_items_account_id_create_time_id",
            ["account_id", "create_time", "id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_pending_invoice_items_subscription_id"), ["subscription_id"], unique=False
        )

    op.create_table(
        "plans",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("currency_code", sa.String(length=3), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("archive_time", UtcDateTime(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("code", name=op.f("uq_plans_code")),
    )
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.create_index("ix_plans_create_time_id", ["create_time", "id"], unique=False)

    op.create_table(
        "subscription_phases",
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("start_time", UtcDateTime(), nullable=False),
        sa.Column("end_time", UtcDateTime(), nullable=True),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", "start_time", name=op.f("pk_subscription_phases")),
    )
    with op.batch_alter_table("subscription_phases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscription_phases_account_id"), ["account_id"], unique=False)

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("test_clock_id", sa.String(length=40), nullable=True),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("billing_time_zone", sa.String(length=64), nullable=False),
        sa.Column("anchor_date", sa.Date(), nullable=False),
        sa.Column("start_time", UtcDateTime(), nullable=False),
        sa.Column("trial_end_time", UtcDateTime(), nullable=True),
        sa.Column("period_index", sa.Integer(), nullable=False),
        sa.Column("current_period_start", UtcDateTime(), nullable=False),
        sa.Column("current_period_end", UtcDateTime(), nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("cancel_time", UtcDateTime(), nullable=True),
        sa.Column("pause_time", UtcDateTime(), nullable=True),
        sa.Column("scheduled_plan_id", sa.String(length=40), nullable=True),
        sa.Column("scheduled_plan_version", sa.Integer(), nullable=True),
        sa.Column("scheduled_quantity", sa.BigInteger(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("due_time", UtcDateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subscriptions_account_id_create_time_id", ["account_id", "create_time", "id"], unique=False
        )
        batch_op.create_index("ix_subscriptions_create_time_id", ["create_time", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_subscriptions_due_time"), ["due_time"], unique=False)
        batch_op.create_index(
            "ix_subscriptions_plan_id_plan_version", ["plan_id", "plan_version"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_subscriptions_test_clock_id"), ["test_clock_id"], unique=False)

    op.create_table(
        "test_clocks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("frozen_time", UtcDateTime(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_test_clocks")),
    )
    with op.batch_alter_table("test_clocks", schema=None) as batch_op:
        batch_op.create_index("ix_test_clocks_create_time_id", ["create_time", "id"], unique=False)

    op.create_table(
        "plan_versions",
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("in_use", sa.Boolean(), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_plan_versions_plan_id_plans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("plan_id", "version", name=op.f("pk_plan_versions")),
    )
    op.create_table(
        "test_clock_accounts",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("test_clock_id", sa.String(length=40), nullable=False),
        sa.Column("attach_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["test_clock_id"],
            ["test_clocks.id"],
            name=op.f("fk_test_clock_accounts_test_clock_id_test_clocks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_test_clock_accounts")),
    )
    with op.batch_alter_table("test_clock_accounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_test_clock_accounts_test_clock_id"), ["test_clock_id"], unique=False
        )

    op.create_table(
        "plan_features",
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("limit", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["plan_id", "version"],
            ["plan_versions.plan_id", "plan_versions.version"],
            name=op.f("fk_plan_features_plan_id_plan_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("plan_id", "version", "code", name=op.f("pk_plan_features")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("billing_time_zone", sa.String(length=64), server_default="UTC", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("billing_time_zone")

    op.drop_table("plan_features")
    with op.batch_alter_table("test_clock_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_test_clock_accounts_test_clock_id"))

    op.drop_table("test_clock_accounts")
    op.drop_table("plan_versions")
    with op.batch_alter_table("test_clocks", schema=None) as batch_op:
        batch_op.drop_index("ix_test_clocks_create_time_id")

    op.drop_table("test_clocks")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriptions_test_clock_id"))
        batch_op.drop_index("ix_subscriptions_plan_id_plan_version")
        batch_op.drop_index(batch_op.f("ix_subscriptions_due_time"))
        batch_op.drop_index("ix_subscriptions_create_time_id")
        batch_op.drop_index("ix_subscriptions_account_id_create_time_id")

    op.drop_table("subscriptions")
    with op.batch_alter_table("subscription_phases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscription_phases_account_id"))

    op.drop_table("subscription_phases")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_index("ix_plans_create_time_id")

    op.drop_table("plans")
    with op.batch_alter_table("pending_invoice_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_invoice_items_subscription_id"))
        batch_op.drop_index("ix_pending_invoice_items_account_id_create_time_id")

    op.drop_table("pending_invoice_items")
    with op.batch_alter_table("meters", schema=None) as batch_op:
        batch_op.drop_index("ix_meters_create_time_id")

    op.drop_table("meters")

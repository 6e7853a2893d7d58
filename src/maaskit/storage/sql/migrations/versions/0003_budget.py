"""budget ledger: per-period counters and reservations

Revision ID: 0003_budget
Revises: 0002_api_keys
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0003_budget"
down_revision = "0002_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_budget_periods",
        sa.Column("account", sa.String(length=256), nullable=False),
        sa.Column("period_start", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("committed_micros", sa.BigInteger(), nullable=False),
        sa.Column("reserved_micros", sa.BigInteger(), nullable=False),
        sa.Column("overage_micros", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account", "period_start", name=op.f("pk_maaskit_budget_periods")),
    )
    op.create_table(
        "maaskit_budget_reservations",
        sa.Column("reservation_id", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=256), nullable=False),
        sa.Column("period_start", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("committed_micros", sa.BigInteger(), nullable=False),
        sa.Column("overage_micros", sa.BigInteger(), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("settled_at", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("reservation_id", "account", name=op.f("pk_maaskit_budget_reservations")),
    )
    op.create_index(
        op.f("ix_maaskit_budget_reservations_created_at"),
        "maaskit_budget_reservations",
        ["created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_maaskit_budget_reservations_created_at"), table_name="maaskit_budget_reservations")
    op.drop_table("maaskit_budget_reservations")
    op.drop_table("maaskit_budget_periods")

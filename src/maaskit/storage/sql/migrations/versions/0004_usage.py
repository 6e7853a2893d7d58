"""usage: maaskit_usage (one row per request, idempotent by request_id)

Revision ID: 0004_usage
Revises: 0003_budget
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0004_usage"
down_revision = "0003_budget"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_usage",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("team_id", sa.String(length=128), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("upstream", sa.String(length=128), nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("usage_source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_maaskit_usage")),
    )
    op.create_index(
        op.f("ix_maaskit_usage_key_id_created_at"), "maaskit_usage", ["key_id", "created_at"], unique=False
    )
    op.create_index(
        op.f("ix_maaskit_usage_team_id_created_at"), "maaskit_usage", ["team_id", "created_at"], unique=False
    )
    op.create_index(
        op.f("ix_maaskit_usage_model_created_at"), "maaskit_usage", ["model", "created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_maaskit_usage_model_created_at"), table_name="maaskit_usage")
    op.drop_index(op.f("ix_maaskit_usage_team_id_created_at"), table_name="maaskit_usage")
    op.drop_index(op.f("ix_maaskit_usage_key_id_created_at"), table_name="maaskit_usage")
    op.drop_table("maaskit_usage")

"""catalog: maaskit_catalog_models, maaskit_sync_locks, maaskit_sync_runs

Revision ID: 0007_catalog
Revises: 0006_identity
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0007_catalog"
down_revision = "0006_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_catalog_models",
        sa.Column("model_id", sa.String(length=256), nullable=False),
        sa.Column("provider", sa.String(length=256), nullable=True),
        sa.Column("upstream_model", sa.String(length=256), nullable=True),
        sa.Column("input_price_e18", sa.BigInteger(), nullable=True),
        sa.Column("output_price_e18", sa.BigInteger(), nullable=True),
        sa.Column("context_window", sa.BigInteger(), nullable=True),
        sa.Column("max_output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("capabilities", sa.Text(), nullable=False),
        sa.Column("available", sa.Boolean(), nullable=False),
        sa.Column("local_overrides", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("unavailable_since", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_maaskit_catalog_models")),
    )
    op.create_table(
        "maaskit_sync_locks",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("expires_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maaskit_sync_locks")),
    )
    op.create_table(
        "maaskit_sync_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("started_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("finished_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error_code", sa.String(length=128), nullable=True),
        sa.Column("summary_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_maaskit_sync_runs")),
    )
    op.create_index(
        op.f("ix_maaskit_sync_runs_started_at"), "maaskit_sync_runs", ["started_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_maaskit_sync_runs_started_at"), table_name="maaskit_sync_runs")
    op.drop_table("maaskit_sync_runs")
    op.drop_table("maaskit_sync_locks")
    op.drop_table("maaskit_catalog_models")

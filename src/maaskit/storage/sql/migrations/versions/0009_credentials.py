"""credentials: upstream credential pool definitions, usage totals and failures by status

Revision ID: 0009_credentials
Revises: 0008_downloads
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0009_credentials"
down_revision = "0008_downloads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_credentials",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("upstream", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("header", sa.String(length=100), nullable=False),
        sa.Column("header_format", sa.String(length=200), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("models", sa.Text(), nullable=True),
        sa.Column("secret_ref", sa.String(length=256), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=32), nullable=True),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maaskit_credentials")),
    )
    op.create_index(
        op.f("ix_maaskit_credentials_upstream"), "maaskit_credentials", ["upstream"], unique=False
    )
    op.create_table(
        "maaskit_credential_usage",
        sa.Column("credential_id", sa.String(length=40), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("successes", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.Column("last_failure_at", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.Column("cooldown_until", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("credential_id", name=op.f("pk_maaskit_credential_usage")),
    )
    op.create_table(
        "maaskit_credential_failures",
        sa.Column("credential_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("credential_id", "status", name=op.f("pk_maaskit_credential_failures")),
    )


def downgrade() -> None:
    op.drop_table("maaskit_credential_failures")
    op.drop_table("maaskit_credential_usage")
    op.drop_index(op.f("ix_maaskit_credentials_upstream"), table_name="maaskit_credentials")
    op.drop_table("maaskit_credentials")

"""api keys: maaskit_api_keys

Revision ID: 0002_api_keys
Revises: 0001_foundation
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0002_api_keys"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_api_keys",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=256), nullable=False),
        sa.Column("team_id", sa.String(length=256), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("allowed_models", sa.Text(), nullable=False),
        sa.Column("budget_micros", sa.BigInteger(), nullable=True),
        sa.Column("rpm_limit", sa.BigInteger(), nullable=True),
        sa.Column("tpm_limit", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("revoked_at", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("previous_digest", sa.String(length=64), nullable=True),
        sa.Column("previous_valid_until", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.Column("rotation_counter", sa.Integer(), nullable=False),
        sa.Column("rotation_idempotency_digest", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maaskit_api_keys")),
    )
    with op.batch_alter_table("maaskit_api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_maaskit_api_keys_digest"), ["digest"], unique=True)
        batch_op.create_index(batch_op.f("ix_maaskit_api_keys_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_maaskit_api_keys_team_id"), ["team_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_maaskit_api_keys_previous_digest"), ["previous_digest"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("maaskit_api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_maaskit_api_keys_previous_digest"))
        batch_op.drop_index(batch_op.f("ix_maaskit_api_keys_team_id"))
        batch_op.drop_index(batch_op.f("ix_maaskit_api_keys_owner_id"))
        batch_op.drop_index(batch_op.f("ix_maaskit_api_keys_digest"))
    op.drop_table("maaskit_api_keys")

"""tokens, sessions and secrets: deny list, refresh families, sessions, OAuth states, secrets

Revision ID: 0005_tokens_sessions_secrets
Revises: 0004_usage
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0005_tokens_sessions_secrets"
down_revision = "0004_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_token_denylist",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_maaskit_token_denylist")),
    )
    op.create_index(
        op.f("ix_maaskit_token_denylist_expires_at"), "maaskit_token_denylist", ["expires_at"], unique=False
    )

    op.create_table(
        "maaskit_refresh_families",
        sa.Column("family_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("current_jti", sa.String(length=64), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("family_id", name=op.f("pk_maaskit_refresh_families")),
    )
    op.create_index(
        op.f("ix_maaskit_refresh_families_expires_at"),
        "maaskit_refresh_families",
        ["expires_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_maaskit_refresh_families_subject"), "maaskit_refresh_families", ["subject"], unique=False
    )

    op.create_table(
        "maaskit_sessions",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=256), nullable=False),
        sa.Column("data_json", sa.Text(), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("idle_expires_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("absolute_expires_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_maaskit_sessions")),
    )
    op.create_index(op.f("ix_maaskit_sessions_user_id"), "maaskit_sessions", ["user_id"], unique=False)
    op.create_index(
        op.f("ix_maaskit_sessions_idle_expires_at"), "maaskit_sessions", ["idle_expires_at"], unique=False
    )

    op.create_table(
        "maaskit_oauth_states",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_maaskit_oauth_states")),
    )
    op.create_index(
        op.f("ix_maaskit_oauth_states_expires_at"), "maaskit_oauth_states", ["expires_at"], unique=False
    )

    op.create_table(
        "maaskit_secrets",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maaskit_secrets")),
    )
    op.create_index(op.f("ix_maaskit_secrets_key_id"), "maaskit_secrets", ["key_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_maaskit_secrets_key_id"), table_name="maaskit_secrets")
    op.drop_table("maaskit_secrets")
    op.drop_index(op.f("ix_maaskit_oauth_states_expires_at"), table_name="maaskit_oauth_states")
    op.drop_table("maaskit_oauth_states")
    op.drop_index(op.f("ix_maaskit_sessions_idle_expires_at"), table_name="maaskit_sessions")
    op.drop_index(op.f("ix_maaskit_sessions_user_id"), table_name="maaskit_sessions")
    op.drop_table("maaskit_sessions")
    op.drop_index(op.f("ix_maaskit_refresh_families_subject"), table_name="maaskit_refresh_families")
    op.drop_index(op.f("ix_maaskit_refresh_families_expires_at"), table_name="maaskit_refresh_families")
    op.drop_table("maaskit_refresh_families")
    op.drop_index(op.f("ix_maaskit_token_denylist_expires_at"), table_name="maaskit_token_denylist")
    op.drop_table("maaskit_token_denylist")

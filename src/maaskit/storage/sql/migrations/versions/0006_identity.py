"""identity: users, roles, role assignments, audit log, access requests

Revision ID: 0006_identity
Revises: 0005_tokens_sessions_secrets
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0006_identity"
down_revision = "0005_tokens_sessions_secrets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_users",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("username_normalized", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=512), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("display_name", sa.String(length=128), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("password_changed_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maaskit_users")),
        sa.UniqueConstraint("username_normalized", name=op.f("uq_maaskit_users_username_normalized")),
    )
    op.create_table(
        "maaskit_roles",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=512), nullable=False),
        sa.Column("permissions_json", sa.Text(), nullable=False),
        sa.Column("parents_json", sa.Text(), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maaskit_roles")),
    )
    op.create_table(
        "maaskit_user_roles",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("granted_by", sa.String(length=64), nullable=False),
        sa.Column("granted_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["maaskit_users.id"],
            name=op.f("fk_maaskit_user_roles_user_id_maaskit_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "role", "team_id", name=op.f("pk_maaskit_user_roles")),
    )
    op.create_index(op.f("ix_maaskit_user_roles_role"), "maaskit_user_roles", ["role"], unique=False)
    op.create_table(
        "maaskit_audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("details_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maaskit_audit_log")),
    )
    op.create_index(op.f("ix_maaskit_audit_log_action"), "maaskit_audit_log", ["action"], unique=False)
    op.create_index(op.f("ix_maaskit_audit_log_actor"), "maaskit_audit_log", ["actor"], unique=False)
    op.create_index(
        op.f("ix_maaskit_audit_log_created_at"), "maaskit_audit_log", ["created_at"], unique=False
    )
    op.create_index(op.f("ix_maaskit_audit_log_target"), "maaskit_audit_log", ["target"], unique=False)
    op.create_table(
        "maaskit_access_requests",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("decided_at", maaskit.storage.sql.base.UTCDateTime(), nullable=True),
        sa.Column("decided_by", sa.String(length=40), nullable=True),
        sa.Column("role", sa.String(length=64), nullable=True),
        sa.Column("decision_reason", sa.String(length=1000), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["maaskit_users.id"],
            name=op.f("fk_maaskit_access_requests_user_id_maaskit_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maaskit_access_requests")),
    )
    op.create_index(
        op.f("ix_maaskit_access_requests_created_at"), "maaskit_access_requests", ["created_at"], unique=False
    )
    op.create_index(
        op.f("ix_maaskit_access_requests_status"), "maaskit_access_requests", ["status"], unique=False
    )
    op.create_index(
        op.f("ix_maaskit_access_requests_user_id"), "maaskit_access_requests", ["user_id"], unique=False
    )
    op.create_index(
        op.f("ix_maaskit_access_requests_one_pending"),
        "maaskit_access_requests",
        ["user_id"],
        unique=True,
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_maaskit_access_requests_one_pending"), table_name="maaskit_access_requests")
    op.drop_index(op.f("ix_maaskit_access_requests_user_id"), table_name="maaskit_access_requests")
    op.drop_index(op.f("ix_maaskit_access_requests_status"), table_name="maaskit_access_requests")
    op.drop_index(op.f("ix_maaskit_access_requests_created_at"), table_name="maaskit_access_requests")
    op.drop_table("maaskit_access_requests")
    op.drop_index(op.f("ix_maaskit_audit_log_target"), table_name="maaskit_audit_log")
    op.drop_index(op.f("ix_maaskit_audit_log_created_at"), table_name="maaskit_audit_log")
    op.drop_index(op.f("ix_maaskit_audit_log_actor"), table_name="maaskit_audit_log")
    op.drop_index(op.f("ix_maaskit_audit_log_action"), table_name="maaskit_audit_log")
    op.drop_table("maaskit_audit_log")
    op.drop_index(op.f("ix_maaskit_user_roles_role"), table_name="maaskit_user_roles")
    op.drop_table("maaskit_user_roles")
    op.drop_table("maaskit_roles")
    op.drop_table("maaskit_users")

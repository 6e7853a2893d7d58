"""downloads: tracked model-file download requests

Revision ID: 0008_downloads
Revises: 0007_catalog
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0008_downloads"
down_revision = "0007_catalog"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_download_requests",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("repo_id", sa.String(length=256), nullable=False),
        sa.Column("filename", sa.String(length=1024), nullable=False),
        sa.Column("revision", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("downloaded_bytes", sa.BigInteger(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("endpoint", sa.String(length=2048), nullable=True),
        sa.Column("created_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maaskit_download_requests")),
    )
    op.create_index(
        op.f("ix_maaskit_download_requests_created_at"),
        "maaskit_download_requests",
        ["created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_maaskit_download_requests_repo_id"), "maaskit_download_requests", ["repo_id"], unique=False
    )
    op.create_index(
        op.f("ix_maaskit_download_requests_status"), "maaskit_download_requests", ["status"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_maaskit_download_requests_status"), table_name="maaskit_download_requests")
    op.drop_index(op.f("ix_maaskit_download_requests_repo_id"), table_name="maaskit_download_requests")
    op.drop_index(op.f("ix_maaskit_download_requests_created_at"), table_name="maaskit_download_requests")
    op.drop_table("maaskit_download_requests")

"""foundation: dynamic setting overrides

Revision ID: 0001_foundation
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maaskit.storage.sql.base

revision = "0001_foundation"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maaskit_setting_overrides",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value_json", sa.Text(), nullable=False),
        sa.Column("updated_at", maaskit.storage.sql.base.UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maaskit_setting_overrides")),
    )


def downgrade() -> None:
    op.drop_table("maaskit_setting_overrides")

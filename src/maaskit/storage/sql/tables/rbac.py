"""Custom roles and role assignments (``RbacService``)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["RoleRow", "UserRoleRow"]


class RoleRow(MaasTable, table=True):
    """A custom role; permissions and parent roles are JSON lists of strings."""

    __tablename__ = "maaskit_roles"

    name: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    description: str = Field(sa_column=sa.Column(sa.String(512), nullable=False))
    permissions_json: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    parents_json: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class UserRoleRow(MaasTable, table=True):
    """A role held by a user; ``team_id`` is ``""`` for a global assignment."""

    __tablename__ = "maaskit_user_roles"

    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(40), sa.ForeignKey("maaskit_users.id", ondelete="CASCADE"), primary_key=True
        )
    )
    role: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True, index=True))
    team_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    granted_by: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    granted_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))

"""User accounts (``UserService``)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["UserRow"]


class UserRow(MaasTable, table=True):
    """One user; ``username_normalized`` is the unique, lower-case lookup form."""

    __tablename__ = "maaskit_users"

    id: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    username: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    username_normalized: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    password_hash: str = Field(sa_column=sa.Column(sa.String(512), nullable=False))
    email: str | None = Field(default=None, sa_column=sa.Column(sa.String(254), nullable=True))
    display_name: str | None = Field(default=None, sa_column=sa.Column(sa.String(128), nullable=True))
    enabled: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    protected: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    password_changed_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))

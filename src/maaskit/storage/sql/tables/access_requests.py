"""Access requests (``AccessRequestService``)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["AccessRequestRow"]


class AccessRequestRow(MaasTable, table=True):
    """One access request; a partial unique index allows one pending request per user."""

    __tablename__ = "maaskit_access_requests"
    __table_args__ = (
        sa.Index(
            "ix_maaskit_access_requests_one_pending",
            "user_id",
            unique=True,
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        ),
    )

    id: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    user_id: str = Field(
        sa_column=sa.Column(
            sa.String(40), sa.ForeignKey("maaskit_users.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    reason: str = Field(sa_column=sa.Column(sa.String(1000), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False, index=True))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    decided_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=True))
    decided_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(40), nullable=True))
    role: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    decision_reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(1000), nullable=True))

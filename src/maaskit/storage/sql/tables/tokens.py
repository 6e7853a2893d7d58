"""Tables of :mod:`maaskit.services.tokens`: the ``jti`` deny list and refresh-token families."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["DeniedTokenRow", "RefreshFamilyRow"]


class DeniedTokenRow(MaasTable, table=True):
    """One revoked token id; the row is useless (and cleaned up) once the token has expired."""

    __tablename__ = "maaskit_token_denylist"

    jti: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))


class RefreshFamilyRow(MaasTable, table=True):
    """One refresh-token family: the only refresh ``jti`` that may still be used, and its state."""

    __tablename__ = "maaskit_refresh_families"

    family_id: str = Field(primary_key=True, max_length=64)
    subject: str = Field(max_length=256, index=True)
    current_jti: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    revoked_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=True))

"""Tables of :mod:`maaskit.services.sessions`: server-side sessions and OAuth ``state`` records."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["OAuthStateRow", "SessionRow"]


class SessionRow(MaasTable, table=True):
    """One session, keyed by the SHA-256 digest of its id (the raw id is never stored)."""

    __tablename__ = "maaskit_sessions"

    digest: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(max_length=256, index=True)
    data_json: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_seen_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    idle_expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    absolute_expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class OAuthStateRow(MaasTable, table=True):
    """One pending OAuth ``state`` (single use), keyed by the digest of the state value."""

    __tablename__ = "maaskit_oauth_states"

    digest: str = Field(primary_key=True, max_length=64)
    payload_json: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))

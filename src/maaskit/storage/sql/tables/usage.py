"""Usage records (``UsageService``): one row per request, idempotent by ``request_id``."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["UsageRecordRow"]


class UsageRecordRow(MaasTable, table=True):
    """One request's usage. ``request_id`` is the primary key, so a request is stored once."""

    __tablename__ = "maaskit_usage"
    __table_args__ = (
        sa.Index("ix_maaskit_usage_key_id_created_at", "key_id", "created_at"),
        sa.Index("ix_maaskit_usage_team_id_created_at", "team_id", "created_at"),
        sa.Index("ix_maaskit_usage_model_created_at", "model", "created_at"),
    )

    request_id: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    key_id: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    owner_id: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    team_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(128), nullable=True))
    model: str = Field(sa_column=sa.Column(sa.String(256), nullable=False))
    upstream: str | None = Field(default=None, sa_column=sa.Column(sa.String(128), nullable=True))
    prompt_tokens: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    completion_tokens: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    total_tokens: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    cost_micros: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    usage_source: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    streamed: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    latency_ms: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))

"""Model catalog tables: models, the sync lease and the sync audit trail.

Prices are stored exactly as ``BigInteger`` USD x 10^18 per token (atto-dollars; the catalog
accepts at most 1 USD per token and 18 decimal places, so every price fits a signed 64-bit column).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["CatalogModelRow", "SyncLockRow", "SyncRunRow"]


class CatalogModelRow(MaasTable, table=True):
    """One model. Rows are never deleted: a model gone upstream has ``available`` false."""

    __tablename__ = "maaskit_catalog_models"

    model_id: str = Field(sa_column=sa.Column(sa.String(256), primary_key=True))
    provider: str | None = Field(default=None, sa_column=sa.Column(sa.String(256), nullable=True))
    upstream_model: str | None = Field(default=None, sa_column=sa.Column(sa.String(256), nullable=True))
    input_price_e18: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    output_price_e18: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    context_window: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    max_output_tokens: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    capabilities: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    available: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    local_overrides: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    source: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    unavailable_since: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )


class SyncLockRow(MaasTable, table=True):
    """A named lease: taken by a conditional UPDATE (expired or own) or an INSERT."""

    __tablename__ = "maaskit_sync_locks"

    name: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    owner: str = Field(sa_column=sa.Column(sa.String(256), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class SyncRunRow(MaasTable, table=True):
    """One sync run (the audit trail)."""

    __tablename__ = "maaskit_sync_runs"
    __table_args__ = (sa.Index("ix_maaskit_sync_runs_started_at", "started_at"),)

    run_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    kind: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    owner: str = Field(sa_column=sa.Column(sa.String(256), nullable=False))
    started_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    finished_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    ok: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    error_code: str | None = Field(default=None, sa_column=sa.Column(sa.String(128), nullable=True))
    summary_json: str = Field(sa_column=sa.Column(sa.Text, nullable=False))

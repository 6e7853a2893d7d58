"""Model-file download requests (``HubService``)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["DownloadRequestRow"]


class DownloadRequestRow(MaasTable, table=True):
    """One download request, updated as it progresses (indexed by status for resume after restart)."""

    __tablename__ = "maaskit_download_requests"

    id: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    repo_id: str = Field(sa_column=sa.Column(sa.String(256), nullable=False, index=True))
    filename: str = Field(sa_column=sa.Column(sa.String(1024), nullable=False))
    revision: str = Field(sa_column=sa.Column(sa.String(256), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False, index=True))
    total_bytes: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger(), nullable=True))
    downloaded_bytes: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    error_code: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    endpoint: str | None = Field(default=None, sa_column=sa.Column(sa.String(2048), nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))

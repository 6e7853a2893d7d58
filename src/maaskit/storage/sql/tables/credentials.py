"""Upstream credentials (``CredentialPool``): definitions, usage totals, failures by status.

No secret material is stored here: ``secret_ref`` names the secret in the secret service.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["CredentialFailureRow", "CredentialRow", "CredentialUsageRow"]


class CredentialRow(MaasTable, table=True):
    """One upstream credential's definition (``models`` is a JSON list or NULL for every model)."""

    __tablename__ = "maaskit_credentials"

    id: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    upstream: str = Field(sa_column=sa.Column(sa.String(100), nullable=False, index=True))
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    kind: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    header: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    header_format: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    weight: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    models: str | None = Field(default=None, sa_column=sa.Column(sa.Text(), nullable=True))
    secret_ref: str = Field(sa_column=sa.Column(sa.String(256), nullable=False))
    enabled: bool = Field(sa_column=sa.Column(sa.Boolean(), nullable=False))
    disabled_reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(32), nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class CredentialUsageRow(MaasTable, table=True):
    """A credential's usage totals (incremented by pool flushes)."""

    __tablename__ = "maaskit_credential_usage"

    credential_id: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    requests: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    successes: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    tokens: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    last_used_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=True))
    last_failure_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=True))
    cooldown_until: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=True))


class CredentialFailureRow(MaasTable, table=True):
    """Failed requests of a credential by HTTP status (``0``: no answer)."""

    __tablename__ = "maaskit_credential_failures"

    credential_id: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    status: int = Field(sa_column=sa.Column(sa.Integer(), primary_key=True, autoincrement=False))
    count: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))

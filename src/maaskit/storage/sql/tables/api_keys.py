"""API keys (``ApiKeyService``): digests and display hints only, never a secret."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["ApiKeyRow"]


class ApiKeyRow(MaasTable, table=True):
    """One API key. Digests are hex HMAC-SHA256 values; money is integer micro-units.

    ``previous_digest``/``previous_valid_until`` keep the secret replaced by the last rotation
    working during its grace period; ``version`` makes every update a compare-and-set.
    """

    __tablename__ = "maaskit_api_keys"

    id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    digest: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, index=True, unique=True))
    hint: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    owner_id: str = Field(sa_column=sa.Column(sa.String(256), nullable=False, index=True))
    team_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(256), nullable=True, index=True))
    name: str = Field(sa_column=sa.Column(sa.String(256), nullable=False))
    allowed_models: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    budget_micros: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    rpm_limit: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    tpm_limit: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    expires_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=True))
    enabled: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    metadata_json: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    previous_digest: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(64), nullable=True, index=True)
    )
    previous_valid_until: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    rotation_counter: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    rotation_idempotency_digest: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(64), nullable=True)
    )
    version: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))

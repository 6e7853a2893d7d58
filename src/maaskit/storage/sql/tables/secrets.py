"""Table of :mod:`maaskit.services.secrets`: encrypted secrets (AES-256-GCM envelopes)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["SecretRow"]


class SecretRow(MaasTable, table=True):
    """One secret: its name, the encrypted envelope and the id of the master key it is under."""

    __tablename__ = "maaskit_secrets"

    name: str = Field(primary_key=True, max_length=256)
    envelope: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    key_id: str = Field(max_length=64, index=True)
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))

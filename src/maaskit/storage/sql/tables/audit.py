"""The append-only audit log (``AuditLog``)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["AuditEventRow"]

_ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class AuditEventRow(MaasTable, table=True):
    """One audit event; maaskit code only ever inserts and selects these rows."""

    __tablename__ = "maaskit_audit_log"

    id: int | None = Field(default=None, sa_column=sa.Column(_ID_TYPE, primary_key=True, autoincrement=True))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    actor: str = Field(sa_column=sa.Column(sa.String(256), nullable=False, index=True))
    action: str = Field(sa_column=sa.Column(sa.String(128), nullable=False, index=True))
    target: str = Field(sa_column=sa.Column(sa.String(256), nullable=False, index=True))
    outcome: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    details_json: str = Field(sa_column=sa.Column(sa.Text(), nullable=False))

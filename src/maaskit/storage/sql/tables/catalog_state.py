"""The catalog revision: a counter every write to ``maaskit_catalog_models`` increases.

The counter is kept by database triggers (migration ``0010_catalog_revision``), so every writer
moves it - this process, another replica, an administrator's SQL. A replica that remembers the
revision it last saw can tell "nothing changed" with one single-row read.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable

__all__ = ["CATALOG_REVISION_NAME", "CatalogStateRow"]

#: The ``name`` of the row counting writes to ``maaskit_catalog_models``.
CATALOG_REVISION_NAME = "models"


class CatalogStateRow(MaasTable, table=True):
    """A named counter (one row, ``models``), increased by triggers on every catalog write."""

    __tablename__ = "maaskit_catalog_state"

    name: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    revision: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))

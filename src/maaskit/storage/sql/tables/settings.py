"""Dynamic setting overrides (``SettingsService``)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime


class SettingOverrideRow(MaasTable, table=True):
    """One dynamic override of a setting, stored as JSON text."""

    __tablename__ = "maaskit_setting_overrides"

    name: str = Field(primary_key=True, max_length=128)
    value_json: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_by: str | None = Field(default=None, max_length=256)

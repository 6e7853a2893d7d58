"""Budget ledger tables (:mod:`maaskit.storage.sql.budget`)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field

from maaskit.storage.sql.base import MaasTable, UTCDateTime

__all__ = ["BudgetPeriodRow", "BudgetReservationRow"]


class BudgetPeriodRow(MaasTable, table=True):
    """The counters of one account's budget in one period (micro-dollars)."""

    __tablename__ = "maaskit_budget_periods"

    account: str = Field(primary_key=True, max_length=256)
    period_start: datetime = Field(sa_column=sa.Column(UTCDateTime(), primary_key=True, nullable=False))
    committed_micros: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    reserved_micros: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    overage_micros: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class BudgetReservationRow(MaasTable, table=True):
    """One budget line of a reservation; settled exactly once (``status`` leaves ``open`` once)."""

    __tablename__ = "maaskit_budget_reservations"

    reservation_id: str = Field(primary_key=True, max_length=64)
    account: str = Field(primary_key=True, max_length=256)
    period_start: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    amount_micros: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    status: str = Field(max_length=16)
    committed_micros: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    overage_micros: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    settled_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=True))

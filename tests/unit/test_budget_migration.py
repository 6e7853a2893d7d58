"""Migration 0003_budget: upgrade, downgrade, and agreement with the table definitions."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from maaskit.storage.sql import Database
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.database import VERSION_TABLE

TABLES = {"maaskit_budget_periods", "maaskit_budget_reservations"}


async def test_upgrade_matches_tables_and_downgrade_removes_them(sql_db: Database) -> None:
    def diff(conn: sa.Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        budget_meta = sa.MetaData(naming_convention=metadata.naming_convention)
        for name in TABLES:
            metadata.tables[name].to_metadata(budget_meta)
        return [
            d
            for d in compare_metadata(ctx, budget_meta)
            if not (d[0] == "remove_table" or (d[0] == "remove_index" and d[1].table.name not in TABLES))
        ]

    def tables(conn: sa.Connection) -> set[str]:
        return set(sa.inspect(conn).get_table_names())

    async with sql_db.connect() as conn:
        assert await conn.run_sync(tables) >= TABLES
        assert await conn.run_sync(diff) == []
    await sql_db.downgrade("0003_budget-1")  # only this branch
    async with sql_db.connect() as conn:
        assert not TABLES & await conn.run_sync(tables)
    await sql_db.migrate()
    async with sql_db.connect() as conn:
        assert await conn.run_sync(tables) >= TABLES

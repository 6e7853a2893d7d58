"""SQL :class:`~maaskit.storage.ports.settings.SettingOverrideStore` on table ``maaskit_setting_overrides``.

Writes are single-statement upserts (``INSERT ... ON CONFLICT DO UPDATE`` on SQLite and
PostgreSQL), so two replicas writing the same setting never fail on a duplicate key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from maaskit.errors import UnavailableError
from maaskit.storage.ports.settings import OverrideRecord
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.settings import SettingOverrideRow

__all__ = ["SqlSettingOverrideStore"]

_table: sa.Table = SettingOverrideRow.__table__  # type: ignore[attr-defined]
_UNAVAILABLE = (OSError, sa.exc.OperationalError, sa.exc.InterfaceError)


class SqlSettingOverrideStore:
    """Setting overrides in the database, shared by every replica.

    Args:
        database: a migrated :class:`~maaskit.storage.sql.database.Database`.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"SqlSettingOverrideStore({self._db!r})"

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._db.transaction() as session:
                yield session
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def load_all(self) -> list[OverrideRecord]:
        """Every stored override, sorted by name."""
        async with self._tx() as session:
            rows = (await session.execute(sa.select(_table).order_by(_table.c.name))).all()
        return [
            OverrideRecord(
                name=row.name, value_json=row.value_json, updated_at=row.updated_at, updated_by=row.updated_by
            )
            for row in rows
        ]

    async def put(self, record: OverrideRecord) -> None:
        """Insert or replace the override of ``record.name`` (one upsert statement)."""
        values = {
            "name": record.name,
            "value_json": record.value_json,
            "updated_at": record.updated_at,
            "updated_by": record.updated_by,
        }
        dialect_insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = dialect_insert(_table).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_table.c.name],
            set_={
                "value_json": stmt.excluded.value_json,
                "updated_at": stmt.excluded.updated_at,
                "updated_by": stmt.excluded.updated_by,
            },
        )
        async with self._tx() as session:
            await session.execute(stmt)

    async def delete(self, name: str) -> bool:
        """Remove the override of *name*; ``True`` if there was one."""
        async with self._tx() as session:
            result = await session.execute(sa.delete(_table).where(_table.c.name == name))
        return bool(getattr(result, "rowcount", 0))

"""SQL :class:`~maaskit.storage.ports.secrets.SecretStore` (table ``maaskit_secrets``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from maaskit.errors import UnavailableError
from maaskit.storage.ports.secrets import SecretRecord
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.secrets import SecretRow

__all__ = ["SqlSecretStore"]

_T: sa.Table = metadata.tables[SecretRow.__tablename__]


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise UnavailableError("database.unavailable") from exc


class SqlSecretStore:
    """Encrypted envelopes in SQL; each write is its own transaction.

    Args:
        database: a migrated :class:`~maaskit.storage.sql.Database`.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"SqlSecretStore({self._db!r})"

    async def put(self, record: SecretRecord) -> None:
        """Upsert (``INSERT ... ON CONFLICT (name) DO UPDATE``)."""
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = insert(_T).values(
            name=record.name, envelope=record.envelope, key_id=record.key_id, updated_at=record.updated_at
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[_T.c.name],
            set_={
                "envelope": stmt.excluded.envelope,
                "key_id": stmt.excluded.key_id,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        with _unavailable():
            async with self._db.transaction() as session:
                await session.execute(stmt)

    async def get(self, name: str) -> SecretRecord | None:
        """The record or ``None``."""
        with _unavailable():
            async with self._db.session() as session:
                row = (await session.execute(sa.select(_T).where(_T.c.name == name))).first()
        if row is None:
            return None
        return SecretRecord(
            name=row.name, envelope=bytes(row.envelope), key_id=row.key_id, updated_at=row.updated_at
        )

    async def delete(self, name: str) -> bool:
        """Delete one row."""
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(sa.delete(_T).where(_T.c.name == name))
                return bool(result.rowcount == 1)

    async def list_names(self) -> list[str]:
        """Every name, sorted."""
        with _unavailable():
            async with self._db.session() as session:
                rows = await session.execute(sa.select(_T.c.name).order_by(_T.c.name))
                return [r[0] for r in rows]

    async def names_not_under(self, key_id: str, limit: int) -> list[str]:
        """Names still under another key (uses the ``key_id`` index)."""
        stmt = sa.select(_T.c.name).where(_T.c.key_id != key_id).order_by(_T.c.name).limit(limit)
        with _unavailable():
            async with self._db.session() as session:
                return [r[0] for r in await session.execute(stmt)]

    async def replace_if(self, name: str, expected_envelope: bytes, record: SecretRecord) -> bool:
        """Conditional ``UPDATE ... WHERE name = :name AND envelope = :expected``."""
        stmt = (
            sa.update(_T)
            .where(_T.c.name == name, _T.c.envelope == expected_envelope)
            .values(envelope=record.envelope, key_id=record.key_id, updated_at=record.updated_at)
        )
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(stmt)
                return bool(result.rowcount == 1)

    async def ping(self) -> None:
        """Ping the database."""
        await self._db.ping()

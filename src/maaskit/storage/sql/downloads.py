"""SQL :class:`~maaskit.storage.ports.downloads.DownloadStore` (SQLite, PostgreSQL)."""

from __future__ import annotations

import builtins
from typing import Any

import sqlalchemy as sa

from maaskit.storage.ports.downloads import DownloadRecord
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.downloads import DownloadRequestRow

__all__ = ["SqlDownloadStore"]

_T: sa.Table = DownloadRequestRow.__table__  # type: ignore[attr-defined]
_FIELDS = (
    "id", "repo_id", "filename", "revision", "status", "total_bytes", "downloaded_bytes",
    "error_code", "endpoint", "created_at", "updated_at",
)  # fmt: skip
_MUTABLE = ("status", "total_bytes", "downloaded_bytes", "error_code", "updated_at")


def _record(row: sa.RowMapping) -> DownloadRecord:
    return DownloadRecord(**{name: row[name] for name in _FIELDS})


def _values(record: DownloadRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _FIELDS}


class SqlDownloadStore:
    """Download requests in ``maaskit_download_requests``.

    Args:
        db: the migrated :class:`~maaskit.storage.sql.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "SqlDownloadStore()"

    async def insert(self, record: DownloadRecord) -> None:
        """Insert a new request (an existing id raises the database's integrity error)."""
        async with self._db.transaction() as session:
            await session.execute(sa.insert(_T).values(**_values(record)))

    async def get(self, request_id: str) -> DownloadRecord | None:
        """The request, or ``None``."""
        async with self._db.session() as session:
            row = (await session.execute(sa.select(_T).where(_T.c.id == request_id))).mappings().first()
        return _record(row) if row is not None else None

    async def list(
        self, *, statuses: tuple[str, ...] | None = None, repo_id: str | None = None, limit: int = 100
    ) -> builtins.list[DownloadRecord]:
        """Matching requests, oldest first."""
        stmt = sa.select(_T)
        if statuses is not None:
            stmt = stmt.where(_T.c.status.in_(statuses))
        if repo_id is not None:
            stmt = stmt.where(_T.c.repo_id == repo_id)
        stmt = stmt.order_by(_T.c.created_at, _T.c.id).limit(limit)
        async with self._db.session() as session:
            rows = (await session.execute(stmt)).mappings().all()
        return [_record(r) for r in rows]

    async def update(self, record: DownloadRecord) -> bool:
        """Write the mutable fields (one ``UPDATE``)."""
        values = {name: getattr(record, name) for name in _MUTABLE}
        async with self._db.transaction() as session:
            result = await session.execute(sa.update(_T).where(_T.c.id == record.id).values(**values))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete(self, request_id: str) -> bool:
        """Remove a request."""
        async with self._db.transaction() as session:
            result = await session.execute(sa.delete(_T).where(_T.c.id == request_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

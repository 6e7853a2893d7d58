"""SQL :class:`~maaskit.storage.ports.access_requests.AccessRequestStore` (SQLite, PostgreSQL)."""

from __future__ import annotations

import builtins
from typing import Any

import sqlalchemy as sa

from maaskit.storage.ports.access_requests import AccessRequestRecord
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.access_requests import AccessRequestRow

__all__ = ["SqlAccessRequestStore"]

_T: sa.Table = AccessRequestRow.__table__  # type: ignore[attr-defined]
_FIELDS = (
    "id", "user_id", "reason", "status", "created_at", "updated_at",
    "decided_at", "decided_by", "role", "decision_reason",
)  # fmt: skip


def _record(row: sa.RowMapping) -> AccessRequestRecord:
    return AccessRequestRecord(**{name: row[name] for name in _FIELDS})


def _values(record: AccessRequestRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _FIELDS}


class SqlAccessRequestStore:
    """Access requests in ``maaskit_access_requests`` (a partial unique index: one pending per user).

    Args:
        db: the migrated :class:`~maaskit.storage.sql.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "SqlAccessRequestStore()"

    async def insert(self, request: AccessRequestRecord) -> bool:
        """Insert; ``False`` when the user already has a pending request (or the user is unknown)."""
        try:
            async with self._db.transaction() as session:
                await session.execute(sa.insert(_T).values(**_values(request)))
        except sa.exc.IntegrityError:
            return False
        return True

    async def get(self, request_id: str) -> AccessRequestRecord | None:
        """The request, or ``None``."""
        async with self._db.session() as session:
            row = (await session.execute(sa.select(_T).where(_T.c.id == request_id))).mappings().first()
        return _record(row) if row is not None else None

    async def list(
        self, *, status: str | None = None, user_id: str | None = None, limit: int = 100
    ) -> builtins.list[AccessRequestRecord]:
        """Matching requests, newest first."""
        stmt = sa.select(_T)
        if status is not None:
            stmt = stmt.where(_T.c.status == status)
        if user_id is not None:
            stmt = stmt.where(_T.c.user_id == user_id)
        stmt = stmt.order_by(_T.c.created_at.desc(), _T.c.id.desc()).limit(limit)
        async with self._db.session() as session:
            rows = (await session.execute(stmt)).mappings().all()
        return [_record(r) for r in rows]

    async def decide(self, decided: AccessRequestRecord, *, expected_status: str) -> bool:
        """Compare-and-set: update only while the stored status is *expected_status*."""
        values = _values(decided)
        for immutable in ("id", "user_id", "reason", "created_at"):
            values.pop(immutable)
        try:
            async with self._db.transaction() as session:
                result = await session.execute(
                    sa.update(_T)
                    .where(_T.c.id == decided.id, _T.c.status == expected_status)
                    .values(**values)
                )
        except sa.exc.IntegrityError:
            return False  # e.g. moving back to pending while a new pending request exists
        return bool(result.rowcount)  # type: ignore[attr-defined]

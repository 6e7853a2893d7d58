"""SQL :class:`~maaskit.storage.ports.users.UserStore` (SQLite, PostgreSQL)."""

from __future__ import annotations

import builtins
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from maaskit.storage.ports.users import UserRecord
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.users import UserRow

__all__ = ["SqlUserStore"]

_T: sa.Table = UserRow.__table__  # type: ignore[attr-defined]


def _values(user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "username_normalized": user.username_normalized,
        "password_hash": user.password_hash,
        "email": user.email,
        "display_name": user.display_name,
        "enabled": user.enabled,
        "protected": user.protected,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "password_changed_at": user.password_changed_at,
    }


def _record(row: sa.RowMapping) -> UserRecord:
    return UserRecord(
        id=row["id"],
        username=row["username"],
        username_normalized=row["username_normalized"],
        password_hash=row["password_hash"],
        email=row["email"],
        display_name=row["display_name"],
        enabled=bool(row["enabled"]),
        protected=bool(row["protected"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        password_changed_at=row["password_changed_at"],
    )


class SqlUserStore:
    """Users in ``maaskit_users`` (deleting a user cascades to its role assignments and requests).

    Args:
        db: the migrated :class:`~maaskit.storage.sql.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "SqlUserStore()"

    async def _one(self, stmt: sa.Select[Any]) -> UserRecord | None:
        async with self._db.session() as session:
            row = (await session.execute(stmt)).mappings().first()
        return _record(row) if row is not None else None

    async def insert(self, user: UserRecord) -> bool:
        """Insert; ``False`` when the id or normalised username is taken."""
        try:
            async with self._db.transaction() as session:
                await session.execute(sa.insert(_T).values(**_values(user)))
        except sa.exc.IntegrityError:
            return False
        return True

    async def get(self, user_id: str) -> UserRecord | None:
        """The user, or ``None``."""
        return await self._one(sa.select(_T).where(_T.c.id == user_id))

    async def get_by_username(self, username_normalized: str) -> UserRecord | None:
        """The user with that normalised username, or ``None``."""
        return await self._one(sa.select(_T).where(_T.c.username_normalized == username_normalized))

    async def get_many(self, user_ids: Collection[str]) -> builtins.list[UserRecord]:
        """The existing users among *user_ids*."""
        ids = list(set(user_ids))
        if not ids:
            return []
        async with self._db.session() as session:
            rows = (await session.execute(sa.select(_T).where(_T.c.id.in_(ids)))).mappings().all()
        return [_record(r) for r in rows]

    async def list(
        self, *, enabled: bool | None = None, after: str | None = None, limit: int = 100
    ) -> builtins.list[UserRecord]:
        """Users ordered by normalised username."""
        stmt = sa.select(_T)
        if enabled is not None:
            stmt = stmt.where(_T.c.enabled == enabled)
        if after is not None:
            stmt = stmt.where(_T.c.username_normalized > after)
        stmt = stmt.order_by(_T.c.username_normalized).limit(limit)
        async with self._db.session() as session:
            rows = (await session.execute(stmt)).mappings().all()
        return [_record(r) for r in rows]

    async def find_protected(self) -> UserRecord | None:
        """The protected default admin, if any."""
        return await self._one(
            sa.select(_T).where(_T.c.protected.is_(True)).order_by(_T.c.created_at).limit(1)
        )

    async def update(self, user: UserRecord) -> bool:
        """Replace every mutable column of the user with the same id."""
        values = _values(user)
        for immutable in ("id", "username", "username_normalized", "created_at"):
            values.pop(immutable)
        async with self._db.transaction() as session:
            result = await session.execute(sa.update(_T).where(_T.c.id == user.id).values(**values))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete(self, user_id: str) -> bool:
        """Delete the user (foreign keys cascade to its assignments and access requests)."""
        async with self._db.transaction() as session:
            result = await session.execute(sa.delete(_T).where(_T.c.id == user_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

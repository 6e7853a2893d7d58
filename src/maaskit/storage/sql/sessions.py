"""SQL :class:`~maaskit.storage.ports.sessions.SessionStore` (``maaskit_sessions``, ``maaskit_oauth_states``).

Single use of OAuth states: ``take_state`` reads the row and deletes it in one transaction and
returns it only when its own ``DELETE`` removed the row, so of two concurrent callers exactly one
gets it. Rotation deletes the old session and inserts the new one in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from maaskit.errors import UnavailableError
from maaskit.storage.ports.sessions import OAuthStateRecord, SessionRecord
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.sessions import OAuthStateRow, SessionRow

__all__ = ["SqlSessionStore"]

_S: sa.Table = metadata.tables[SessionRow.__tablename__]
_ST: sa.Table = metadata.tables[OAuthStateRow.__tablename__]


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise UnavailableError("database.unavailable") from exc


def _values(record: SessionRecord) -> dict[str, Any]:
    return {
        "digest": record.digest,
        "user_id": record.user_id,
        "data_json": json.dumps(dict(record.data), separators=(",", ":")),
        "created_at": record.created_at,
        "last_seen_at": record.last_seen_at,
        "idle_expires_at": record.idle_expires_at,
        "absolute_expires_at": record.absolute_expires_at,
    }


class SqlSessionStore:
    """Sessions and OAuth states in SQL.

    Args:
        database: a migrated :class:`~maaskit.storage.sql.Database`.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"SqlSessionStore({self._db!r})"

    async def create(self, record: SessionRecord) -> None:
        """Insert a session."""
        with _unavailable():
            async with self._db.transaction() as session:
                await session.execute(sa.insert(_S).values(**_values(record)))

    async def get(self, digest: str) -> SessionRecord | None:
        """The session or ``None``."""
        with _unavailable():
            async with self._db.session() as session:
                row = (await session.execute(sa.select(_S).where(_S.c.digest == digest))).first()
        if row is None:
            return None
        return SessionRecord(
            digest=row.digest,
            user_id=row.user_id,
            data=json.loads(row.data_json),
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            idle_expires_at=row.idle_expires_at,
            absolute_expires_at=row.absolute_expires_at,
        )

    async def _update(self, digest: str, **values: Any) -> bool:
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(
                    sa.update(_S).where(_S.c.digest == digest).values(**values)
                )
                return bool(result.rowcount == 1)

    async def touch(self, digest: str, last_seen_at: datetime, idle_expires_at: datetime) -> bool:
        """Slide the idle expiry."""
        return await self._update(digest, last_seen_at=last_seen_at, idle_expires_at=idle_expires_at)

    async def update_data(self, digest: str, data: Mapping[str, Any]) -> bool:
        """Replace the data."""
        return await self._update(digest, data_json=json.dumps(dict(data), separators=(",", ":")))

    async def replace(self, old_digest: str, record: SessionRecord) -> bool:
        """Delete the old row and insert the new one in one transaction."""
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(sa.delete(_S).where(_S.c.digest == old_digest))
                if result.rowcount != 1:
                    return False
                await session.execute(sa.insert(_S).values(**_values(record)))
                return True

    async def delete(self, digest: str) -> bool:
        """Delete one session."""
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(sa.delete(_S).where(_S.c.digest == digest))
                return bool(result.rowcount == 1)

    async def delete_user(self, user_id: str) -> int:
        """Delete a user's sessions."""
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(sa.delete(_S).where(_S.c.user_id == user_id))
                return int(result.rowcount)

    async def put_state(self, record: OAuthStateRecord) -> None:
        """Insert an OAuth state."""
        stmt = sa.insert(_ST).values(
            digest=record.digest,
            payload_json=json.dumps(dict(record.payload), separators=(",", ":")),
            created_at=record.created_at,
            expires_at=record.expires_at,
        )
        with _unavailable():
            async with self._db.transaction() as session:
                await session.execute(stmt)

    async def take_state(self, digest: str, now: datetime) -> OAuthStateRecord | None:
        """Read and delete the state; only the caller whose ``DELETE`` removed the row gets it."""
        with _unavailable():
            async with self._db.transaction() as session:
                row = (await session.execute(sa.select(_ST).where(_ST.c.digest == digest))).first()
                if row is None:
                    return None
                result: Any = await session.execute(sa.delete(_ST).where(_ST.c.digest == digest))
                if result.rowcount != 1 or row.expires_at <= now:
                    return None
        return OAuthStateRecord(
            digest=row.digest,
            payload=json.loads(row.payload_json),
            created_at=row.created_at,
            expires_at=row.expires_at,
        )

    async def cleanup_expired(self, now: datetime) -> int:
        """Delete expired sessions and states."""
        with _unavailable():
            async with self._db.transaction() as session:
                a: Any = await session.execute(sa.delete(_S).where(_S.c.idle_expires_at <= now))
                b: Any = await session.execute(sa.delete(_ST).where(_ST.c.expires_at <= now))
                return int(a.rowcount) + int(b.rowcount)

    async def ping(self) -> None:
        """Ping the database."""
        await self._db.ping()

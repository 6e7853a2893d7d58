"""SQL :class:`~maaskit.storage.ports.tokens.TokenStore` (SQLite and PostgreSQL).

Rotation is one conditional ``UPDATE ... WHERE family_id = :id AND current_jti = :presented AND
revoked_at IS NULL AND expires_at > :now``: the database serialises concurrent updates of the row,
so exactly one of two simultaneous uses of a refresh token sees ``rowcount == 1``. The loser reads
the row in the same transaction and revokes the family (reuse detection).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from maaskit.errors import UnavailableError
from maaskit.storage.ports.tokens import RefreshFamily, RotateOutcome
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.tokens import DeniedTokenRow, RefreshFamilyRow

__all__ = ["SqlTokenStore"]

_DENY: sa.Table = metadata.tables[DeniedTokenRow.__tablename__]
_FAM: sa.Table = metadata.tables[RefreshFamilyRow.__tablename__]


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise UnavailableError("database.unavailable") from exc


def _family(row: Any) -> RefreshFamily:
    return RefreshFamily(
        family_id=row.family_id,
        subject=row.subject,
        current_jti=row.current_jti,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


class SqlTokenStore:
    """Deny list and refresh families in ``maaskit_token_denylist`` / ``maaskit_refresh_families``.

    Args:
        database: a migrated :class:`~maaskit.storage.sql.Database`.
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"SqlTokenStore({self._db!r})"

    async def deny(self, jti: str, expires_at: datetime, now: datetime) -> None:
        """Upsert a deny-list entry; a later expiry wins."""
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = insert(_DENY).values(jti=jti, expires_at=expires_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_DENY.c.jti],
            set_={"expires_at": stmt.excluded.expires_at},
            where=_DENY.c.expires_at < stmt.excluded.expires_at,
        )
        with _unavailable():
            async with self._db.transaction() as session:
                await session.execute(stmt)

    async def is_denied(self, jti: str, now: datetime) -> bool:
        """Whether a live deny-list entry exists."""
        stmt = sa.select(sa.literal(1)).where(_DENY.c.jti == jti, _DENY.c.expires_at > now)
        with _unavailable():
            async with self._db.session() as session:
                return (await session.execute(stmt)).first() is not None

    async def create_family(self, family: RefreshFamily) -> None:
        """Insert a new family."""
        stmt = sa.insert(_FAM).values(
            family_id=family.family_id,
            subject=family.subject,
            current_jti=family.current_jti,
            created_at=family.created_at,
            expires_at=family.expires_at,
            revoked_at=family.revoked_at,
        )
        with _unavailable():
            async with self._db.transaction() as session:
                await session.execute(stmt)

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        """The family or ``None``."""
        with _unavailable():
            async with self._db.session() as session:
                row = (await session.execute(sa.select(_FAM).where(_FAM.c.family_id == family_id))).first()
        return _family(row) if row is not None else None

    async def rotate_family(
        self, family_id: str, presented_jti: str, new_jti: str, new_expires_at: datetime, now: datetime
    ) -> RotateOutcome:
        """Conditional ``UPDATE`` (compare-and-set); on a mismatch, revoke the family."""
        cas = (
            sa.update(_FAM)
            .where(
                _FAM.c.family_id == family_id,
                _FAM.c.current_jti == presented_jti,
                _FAM.c.revoked_at.is_(None),
                _FAM.c.expires_at > now,
            )
            .values(current_jti=new_jti, expires_at=new_expires_at)
        )
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(cas)
                if result.rowcount == 1:
                    return RotateOutcome.ROTATED
                row = (await session.execute(sa.select(_FAM).where(_FAM.c.family_id == family_id))).first()
                if row is None or row.expires_at <= now:
                    return RotateOutcome.UNKNOWN
                if row.revoked_at is not None:
                    return RotateOutcome.REVOKED
                await session.execute(
                    sa.update(_FAM)
                    .where(_FAM.c.family_id == family_id, _FAM.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                return RotateOutcome.REUSED

    async def set_current(
        self, family_id: str, new_jti: str, new_expires_at: datetime, now: datetime
    ) -> bool:
        """Unconditionally move the family to *new_jti* (if it is live)."""
        stmt = (
            sa.update(_FAM)
            .where(_FAM.c.family_id == family_id, _FAM.c.revoked_at.is_(None), _FAM.c.expires_at > now)
            .values(
                current_jti=new_jti,
                expires_at=sa.case(
                    (_FAM.c.expires_at < new_expires_at, new_expires_at), else_=_FAM.c.expires_at
                ),
            )
        )
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(stmt)
                return bool(result.rowcount == 1)

    async def revoke_family(self, family_id: str, now: datetime) -> bool:
        """Revoke one family."""
        stmt = (
            sa.update(_FAM)
            .where(_FAM.c.family_id == family_id, _FAM.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(stmt)
                return bool(result.rowcount == 1)

    async def revoke_subject(self, subject: str, now: datetime) -> int:
        """Revoke every live family of *subject* in one statement."""
        stmt = (
            sa.update(_FAM)
            .where(_FAM.c.subject == subject, _FAM.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        with _unavailable():
            async with self._db.transaction() as session:
                result: Any = await session.execute(stmt)
                return int(result.rowcount)

    async def cleanup_expired(self, now: datetime) -> int:
        """Delete expired deny-list entries and families."""
        with _unavailable():
            async with self._db.transaction() as session:
                a: Any = await session.execute(sa.delete(_DENY).where(_DENY.c.expires_at <= now))
                b: Any = await session.execute(sa.delete(_FAM).where(_FAM.c.expires_at <= now))
                return int(a.rowcount) + int(b.rowcount)

    async def ping(self) -> None:
        """Ping the database."""
        await self._db.ping()

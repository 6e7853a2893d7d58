"""SQL API key store (SQLite and PostgreSQL) over the ``maaskit_api_keys`` table.

Example::

    db = Database("sqlite+aiosqlite:///./maaskit.db")
    await db.migrate()
    store = SqlApiKeyStore(db)
"""

from __future__ import annotations

import builtins
import json
from typing import Any

import sqlalchemy as sa

from maaskit.errors import ConflictError, UnavailableError
from maaskit.storage.ports.api_keys import ApiKeyRecord
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.api_keys import ApiKeyRow

__all__ = ["SqlApiKeyStore"]

_T: sa.Table = ApiKeyRow.__table__  # type: ignore[attr-defined]
_UNAVAILABLE = (OSError, sa.exc.OperationalError, sa.exc.InterfaceError)


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _to_row(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "digest": record.digest.hex(),
        "hint": record.hint,
        "owner_id": record.owner_id,
        "team_id": record.team_id,
        "name": record.name,
        "allowed_models": json.dumps(sorted(record.allowed_models)),
        "budget_micros": record.budget_micros,
        "rpm_limit": record.rpm_limit,
        "tpm_limit": record.tpm_limit,
        "expires_at": record.expires_at,
        "enabled": record.enabled,
        "revoked_at": record.revoked_at,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "metadata_json": json.dumps(dict(record.metadata), sort_keys=True),
        "previous_digest": _hex(record.previous_digest),
        "previous_valid_until": record.previous_valid_until,
        "rotation_counter": record.rotation_counter,
        "rotation_idempotency_digest": _hex(record.rotation_idempotency_digest),
        "version": record.version,
    }


def _from_row(row: sa.RowMapping) -> ApiKeyRecord:
    prev = row["previous_digest"]
    idem = row["rotation_idempotency_digest"]
    return ApiKeyRecord(
        id=row["id"],
        digest=bytes.fromhex(row["digest"]),
        hint=row["hint"],
        owner_id=row["owner_id"],
        team_id=row["team_id"],
        name=row["name"],
        allowed_models=frozenset(json.loads(row["allowed_models"])),
        budget_micros=row["budget_micros"],
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        expires_at=row["expires_at"],
        enabled=bool(row["enabled"]),
        revoked_at=row["revoked_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        metadata=json.loads(row["metadata_json"]),
        previous_digest=None if prev is None else bytes.fromhex(prev),
        previous_valid_until=row["previous_valid_until"],
        rotation_counter=row["rotation_counter"],
        rotation_idempotency_digest=None if idem is None else bytes.fromhex(idem),
        version=row["version"],
    )


class SqlApiKeyStore:
    """An :class:`~maaskit.storage.ports.api_keys.ApiKeyStore` in ``maaskit_api_keys``.

    Lookups by digest use the unique ``digest`` index or the ``previous_digest`` index; updates are
    one ``UPDATE ... WHERE id = :id AND version = :expected`` statement (compare-and-set).

    Args:
        database: a migrated :class:`~maaskit.storage.sql.database.Database`.
    """

    __slots__ = ("_db",)

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"SqlApiKeyStore({self._db!r})"

    async def insert(self, record: ApiKeyRecord) -> None:
        """Insert a new row; ``api_key.conflict`` if its id or digest exists."""
        try:
            async with self._db.transaction() as session:
                await session.execute(sa.insert(_T).values(**_to_row(record)))
        except sa.exc.IntegrityError:
            raise ConflictError("api_key.conflict", key_id=record.id) from None
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def _one(self, where: sa.ColumnElement[bool]) -> sa.RowMapping | None:
        try:
            async with self._db.session() as session:
                result = await session.execute(sa.select(_T).where(where))
                return result.mappings().first()
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record with *key_id*, or ``None``."""
        row = await self._one(_T.c.id == key_id)
        return None if row is None else _from_row(row)

    async def find_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        """The record whose current or previous digest is *digest*, or ``None``."""
        value = digest.hex()
        row = await self._one(sa.or_(_T.c.digest == value, _T.c.previous_digest == value))
        return None if row is None else _from_row(row)

    async def update(self, record: ApiKeyRecord, *, expected_version: int) -> bool:
        """Compare-and-set on ``version``; ``False`` (nothing written) on a mismatch."""
        values = _to_row(record)
        del values["id"]
        try:
            async with self._db.transaction() as session:
                result = await session.execute(
                    sa.update(_T)
                    .where(_T.c.id == record.id, _T.c.version == expected_version)
                    .values(**values)
                )
                return bool(result.rowcount == 1)  # type: ignore[attr-defined]
        except sa.exc.IntegrityError:
            raise ConflictError("api_key.conflict", key_id=record.id) from None
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def list(
        self, *, owner_id: str | None = None, team_id: str | None = None, include_revoked: bool = False
    ) -> builtins.list[ApiKeyRecord]:
        """Records matching every given filter, ordered by ``created_at`` then ``id``."""
        query = sa.select(_T).order_by(_T.c.created_at, _T.c.id)
        if owner_id is not None:
            query = query.where(_T.c.owner_id == owner_id)
        if team_id is not None:
            query = query.where(_T.c.team_id == team_id)
        if not include_revoked:
            query = query.where(_T.c.revoked_at.is_(None))
        try:
            async with self._db.session() as session:
                result = await session.execute(query)
                return [_from_row(row) for row in result.mappings()]
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def ping(self) -> None:
        """Run ``SELECT 1`` on the database."""
        await self._db.ping()

"""SQL :class:`~maaskit.storage.ports.credentials.CredentialStore` (SQLite, PostgreSQL).

Tables ``maaskit_credentials``, ``maaskit_credential_usage`` and ``maaskit_credential_failures``.
Usage is added with ``INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n``, so flushes from
several replicas add up.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from maaskit.errors import UnavailableError
from maaskit.storage.ports.credentials import CredentialRecord, CredentialUsage, CredentialUsageDelta
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.credentials import CredentialFailureRow, CredentialRow, CredentialUsageRow

__all__ = ["SqlCredentialStore"]

_C: sa.Table = CredentialRow.__table__  # type: ignore[attr-defined]
_U: sa.Table = CredentialUsageRow.__table__  # type: ignore[attr-defined]
_F: sa.Table = CredentialFailureRow.__table__  # type: ignore[attr-defined]

_MUTABLE = (
    "name", "header", "header_format", "weight", "models", "enabled", "disabled_reason", "updated_at",
)  # fmt: skip


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise UnavailableError("database.unavailable") from exc


def _models_out(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(json.loads(value))


def _values(record: CredentialRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "upstream": record.upstream,
        "name": record.name,
        "kind": record.kind,
        "header": record.header,
        "header_format": record.header_format,
        "weight": record.weight,
        "models": None if record.models is None else json.dumps(list(record.models)),
        "secret_ref": record.secret_ref,
        "enabled": record.enabled,
        "disabled_reason": record.disabled_reason,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def _record(row: sa.RowMapping) -> CredentialRecord:
    return CredentialRecord(
        id=row["id"],
        upstream=row["upstream"],
        name=row["name"],
        kind=row["kind"],
        header=row["header"],
        header_format=row["header_format"],
        weight=row["weight"],
        models=_models_out(row["models"]),
        secret_ref=row["secret_ref"],
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class SqlCredentialStore:
    """Credential definitions and usage totals in SQL.

    Args:
        db: the migrated :class:`~maaskit.storage.sql.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "SqlCredentialStore()"

    def _insert(self) -> Any:
        return postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert

    async def insert(self, record: CredentialRecord) -> None:
        """Insert a new credential (an existing id raises the database's integrity error)."""
        with _unavailable():
            async with self._db.transaction() as session:
                await session.execute(sa.insert(_C).values(**_values(record)))

    async def get(self, credential_id: str) -> CredentialRecord | None:
        """The credential, or ``None``."""
        with _unavailable():
            async with self._db.session() as session:
                row = (
                    (await session.execute(sa.select(_C).where(_C.c.id == credential_id))).mappings().first()
                )
        return _record(row) if row is not None else None

    async def list(self, *, upstream: str | None = None) -> builtins.list[CredentialRecord]:
        """Every credential (of *upstream*), oldest first."""
        stmt = sa.select(_C)
        if upstream is not None:
            stmt = stmt.where(_C.c.upstream == upstream)
        stmt = stmt.order_by(_C.c.created_at, _C.c.id)
        with _unavailable():
            async with self._db.session() as session:
                rows = (await session.execute(stmt)).mappings().all()
        return [_record(r) for r in rows]

    @staticmethod
    async def _update(session: Any, record: CredentialRecord) -> bool:
        values = _values(record)
        stmt = sa.update(_C).where(_C.c.id == record.id).values(**{k: values[k] for k in _MUTABLE})
        result = await session.execute(stmt)
        return bool(result.rowcount)

    async def update(self, record: CredentialRecord) -> bool:
        """Write the mutable fields (one ``UPDATE``)."""
        with _unavailable():
            async with self._db.transaction() as session:
                return await self._update(session, record)

    async def delete(self, credential_id: str) -> bool:
        """Remove the credential, its usage and failure rows (one transaction)."""
        with _unavailable():
            async with self._db.transaction() as session:
                await session.execute(sa.delete(_F).where(_F.c.credential_id == credential_id))
                await session.execute(sa.delete(_U).where(_U.c.credential_id == credential_id))
                result: Any = await session.execute(sa.delete(_C).where(_C.c.id == credential_id))
                return bool(result.rowcount)

    async def add_usage(
        self, deltas: Sequence[CredentialUsageDelta], records: Sequence[CredentialRecord] = ()
    ) -> None:
        """Write *records* and add *deltas* in one transaction (unknown credentials are skipped)."""
        if not deltas and not records:
            return
        insert = self._insert()
        with _unavailable():
            async with self._db.transaction() as session:
                for record in records:
                    await self._update(session, record)
                ids = {d.credential_id for d in deltas}
                known: set[str] = set()
                if ids:
                    rows = await session.execute(sa.select(_C.c.id).where(_C.c.id.in_(ids)))
                    known = {r[0] for r in rows}
                for d in deltas:
                    if d.credential_id not in known:
                        continue
                    stmt = insert(_U).values(
                        credential_id=d.credential_id,
                        requests=d.requests,
                        successes=d.successes,
                        tokens=d.tokens,
                        last_used_at=d.last_used_at,
                        last_failure_at=d.last_failure_at,
                        cooldown_until=d.cooldown_until,
                    )
                    ex = stmt.excluded
                    set_: dict[str, Any] = {
                        "requests": _U.c.requests + ex.requests,
                        "successes": _U.c.successes + ex.successes,
                        "tokens": _U.c.tokens + ex.tokens,
                        "last_used_at": sa.func.coalesce(ex.last_used_at, _U.c.last_used_at),
                        "last_failure_at": sa.func.coalesce(ex.last_failure_at, _U.c.last_failure_at),
                    }
                    if d.set_cooldown:
                        set_["cooldown_until"] = ex.cooldown_until
                    await session.execute(
                        stmt.on_conflict_do_update(index_elements=[_U.c.credential_id], set_=set_)
                    )
                    for status, count in d.failures.items():
                        fstmt = insert(_F).values(credential_id=d.credential_id, status=status, count=count)
                        await session.execute(
                            fstmt.on_conflict_do_update(
                                index_elements=[_F.c.credential_id, _F.c.status],
                                set_={"count": _F.c.count + fstmt.excluded.count},
                            )
                        )

    async def usage(self) -> dict[str, CredentialUsage]:
        """Every used credential's totals."""
        with _unavailable():
            async with self._db.session() as session:
                urows = (await session.execute(sa.select(_U))).mappings().all()
                frows = (await session.execute(sa.select(_F))).mappings().all()
        failures: dict[str, dict[int, int]] = {}
        for f in frows:
            failures.setdefault(f["credential_id"], {})[int(f["status"])] = int(f["count"])
        return {
            u["credential_id"]: CredentialUsage(
                u["credential_id"],
                requests=int(u["requests"]),
                successes=int(u["successes"]),
                failures=failures.get(u["credential_id"], {}),
                tokens=int(u["tokens"]),
                last_used_at=u["last_used_at"],
                last_failure_at=u["last_failure_at"],
                cooldown_until=u["cooldown_until"],
            )
            for u in urows
        }

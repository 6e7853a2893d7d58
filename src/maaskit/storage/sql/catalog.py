"""SQL catalog stores (SQLite and PostgreSQL): models, the sync lease and the sync audit trail.

:meth:`SqlCatalogStore.apply` runs one transaction with at most two statements, each executed
with many parameter sets: an ``INSERT`` of the new rows and an ``UPDATE ... WHERE model_id = ?``
of the changed ones. An empty change set opens no transaction at all.

:class:`SqlSyncLock` is a lease row: taken by a conditional ``UPDATE`` (expired, or already
ours) or, when the row does not exist, an ``INSERT`` that loses cleanly on the primary key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from maaskit.errors import ConflictError, UnavailableError
from maaskit.services.catalog import CatalogModel, SyncRun
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.catalog import CatalogModelRow, SyncLockRow, SyncRunRow

__all__ = ["SqlCatalogStore", "SqlSyncLock", "SqlSyncRunStore", "price_from_e18", "price_to_e18"]

_models: sa.Table = CatalogModelRow.__table__  # type: ignore[attr-defined]
_locks: sa.Table = SyncLockRow.__table__  # type: ignore[attr-defined]
_runs: sa.Table = SyncRunRow.__table__  # type: ignore[attr-defined]
_UNAVAILABLE = (OSError, sa.exc.OperationalError, sa.exc.InterfaceError)
_E18 = 18


def price_to_e18(price: Decimal | None) -> int | None:
    """USD per token as an exact integer of USD x 10^18 (the catalog allows at most 18 places)."""
    if price is None:
        return None
    scaled = price.scaleb(_E18)
    value = int(scaled)
    if value != scaled:
        raise ValueError("price has more than 18 decimal places")
    return value


def price_from_e18(value: int | None) -> Decimal | None:
    """The inverse of :func:`price_to_e18` (normalised)."""
    if value is None:
        return None
    return Decimal(value).scaleb(-_E18).normalize() if value else Decimal(0)


def _params(m: CatalogModel) -> dict[str, Any]:
    return {
        "model_id": m.model_id,
        "provider": m.provider,
        "upstream_model": m.upstream_model,
        "input_price_e18": price_to_e18(m.input_price),
        "output_price_e18": price_to_e18(m.output_price),
        "context_window": m.context_window,
        "max_output_tokens": m.max_output_tokens,
        "capabilities": ",".join(sorted(m.capabilities)),
        "available": m.available,
        "local_overrides": ",".join(sorted(m.local_overrides)),
        "source": m.source,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "unavailable_since": m.unavailable_since,
    }


def _split(text: str) -> frozenset[str]:
    return frozenset(text.split(",")) if text else frozenset()


def _model(row: Any) -> CatalogModel:
    return CatalogModel.restore(
        model_id=row.model_id,
        provider=row.provider,
        upstream_model=row.upstream_model,
        input_price=price_from_e18(row.input_price_e18),
        output_price=price_from_e18(row.output_price_e18),
        context_window=row.context_window,
        max_output_tokens=row.max_output_tokens,
        capabilities=_split(row.capabilities),
        available=bool(row.available),
        local_overrides=_split(row.local_overrides),
        source=row.source,
        created_at=row.created_at,
        updated_at=row.updated_at,
        unavailable_since=row.unavailable_since,
    )


_SELECT = sa.select(_models).order_by(_models.c.model_id)
_INSERT = sa.insert(_models)
_UPDATE = (
    sa.update(_models)
    .where(_models.c.model_id == sa.bindparam("b_model_id"))
    .values({c.name: sa.bindparam(c.name) for c in _models.c if c.name not in ("model_id", "created_at")})
)


class SqlCatalogStore:
    """:class:`~maaskit.storage.ports.catalog.CatalogStore` on a :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._rows_written = 0

    def __repr__(self) -> str:
        return f"SqlCatalogStore({self._db!r})"

    @property
    def rows_written(self) -> int:
        """Rows inserted or updated by this object since creation."""
        return self._rows_written

    async def list_models(self) -> list[CatalogModel]:
        """Every model, sorted by id."""
        try:
            async with self._db.connect() as conn:
                rows = (await conn.execute(_SELECT)).all()
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc
        return [_model(r) for r in rows]

    async def get(self, model_id: str) -> CatalogModel | None:
        """The model, or ``None``."""
        try:
            async with self._db.connect() as conn:
                row = (await conn.execute(sa.select(_models).where(_models.c.model_id == model_id))).first()
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc
        return _model(row) if row is not None else None

    async def apply(self, inserts: Sequence[CatalogModel], updates: Sequence[CatalogModel]) -> None:
        """Insert and update rows in one transaction (nothing at all for an empty change set)."""
        if not inserts and not updates:
            return
        insert_params = [_params(m) for m in inserts]
        update_params = []
        for m in updates:
            p = _params(m)
            p["b_model_id"] = p.pop("model_id")
            del p["created_at"]
            update_params.append(p)
        try:
            async with self._db.engine.begin() as conn:
                if insert_params:
                    await conn.execute(_INSERT, insert_params)
                if update_params:
                    result = await conn.execute(_UPDATE, update_params)
                    if conn.dialect.supports_sane_multi_rowcount and result.rowcount != len(update_params):
                        raise ConflictError("catalog.conflict", model="(changed concurrently)")
        except sa.exc.IntegrityError:
            raise ConflictError("catalog.conflict", model="(inserted concurrently)") from None
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc
        self._rows_written += len(insert_params) + len(update_params)


class SqlSyncLock:
    """:class:`~maaskit.storage.ports.catalog.SyncLock` as a row of ``maaskit_sync_locks``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"SqlSyncLock({self._db!r})"

    async def acquire(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        """Conditional UPDATE (expired or own lease), else INSERT; ``False`` when another holds it."""
        c = _locks.c
        try:
            async with self._db.engine.begin() as conn:
                result = await conn.execute(
                    sa.update(_locks)
                    .where(c.name == name, sa.or_(c.expires_at <= now, c.owner == owner))
                    .values(owner=owner, expires_at=until)
                )
                if result.rowcount == 1:
                    return True
            try:
                async with self._db.engine.begin() as conn:
                    await conn.execute(sa.insert(_locks).values(name=name, owner=owner, expires_at=until))
            except sa.exc.IntegrityError:
                return False
            return True
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def release(self, name: str, owner: str) -> None:
        """Delete the lease row if *owner* holds it."""
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(sa.delete(_locks).where(_locks.c.name == name, _locks.c.owner == owner))
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def holder(self, name: str, now: datetime) -> str | None:
        """The owner of the unexpired lease, or ``None``."""
        c = _locks.c
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(c.owner).where(c.name == name, c.expires_at > now))).first()
        return str(row.owner) if row is not None else None


class SqlSyncRunStore:
    """:class:`~maaskit.storage.ports.catalog.SyncRunStore` in ``maaskit_sync_runs``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return f"SqlSyncRunStore({self._db!r})"

    async def add(self, run: SyncRun) -> None:
        """Insert one run."""
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    sa.insert(_runs).values(
                        run_id=run.run_id,
                        kind=run.kind,
                        owner=run.owner,
                        started_at=run.started_at,
                        finished_at=run.finished_at,
                        ok=run.ok,
                        error_code=run.error_code,
                        summary_json=json.dumps(dict(run.summary), sort_keys=True, default=str),
                    )
                )
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def recent(self, limit: int = 20) -> list[SyncRun]:
        """The latest runs, newest first."""
        if limit <= 0:
            return []
        c = _runs.c
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(_runs).order_by(c.started_at.desc(), c.run_id.desc()).limit(limit)
                )
            ).all()
        return [
            SyncRun(
                run_id=r.run_id,
                kind=r.kind,
                owner=r.owner,
                started_at=r.started_at,
                finished_at=r.finished_at,
                ok=bool(r.ok),
                summary=json.loads(r.summary_json),
                error_code=r.error_code,
            )
            for r in rows
        ]

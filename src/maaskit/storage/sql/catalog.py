"""SQL catalog stores (SQLite and PostgreSQL): models, the sync lease and the sync audit trail.

:meth:`SqlCatalogStore.apply` runs one transaction with at most two statements, each executed
with many parameter sets: an ``INSERT`` of the new rows and an ``UPDATE ... WHERE model_id = ?``
of the changed ones. An empty change set opens no transaction at all.

Every write to ``maaskit_catalog_models`` (by anyone) increases the catalog revision (a row of
``maaskit_catalog_state`` kept by triggers, migration ``0010_catalog_revision``):
:meth:`SqlCatalogStore.revision` reads it in one single-row query and
:meth:`SqlCatalogStore.apply_tracked` reports the revision before and after its own write, so the
catalog can tell that nothing changed since it last looked.

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
from maaskit.storage.sql.tables.catalog_state import CATALOG_REVISION_NAME, CatalogStateRow

__all__ = ["SqlCatalogStore", "SqlSyncLock", "SqlSyncRunStore", "price_from_e18", "price_to_e18"]

_models: sa.Table = CatalogModelRow.__table__  # type: ignore[attr-defined]
_locks: sa.Table = SyncLockRow.__table__  # type: ignore[attr-defined]
_runs: sa.Table = SyncRunRow.__table__  # type: ignore[attr-defined]
_state: sa.Table = CatalogStateRow.__table__  # type: ignore[attr-defined]
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


# Prices and capability lists repeat across a catalog: decode each distinct stored value once.
_PRICES: dict[int, Decimal] = {}
_SETS: dict[str, frozenset[str]] = {}
_CACHE_LIMIT = 65536


def _price(value: int | None) -> Decimal | None:
    if value is None:
        return None
    price = _PRICES.get(value)
    if price is None:
        price = price_from_e18(value)
        assert price is not None
        if len(_PRICES) >= _CACHE_LIMIT:
            _PRICES.clear()
        _PRICES[value] = price
    return price


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
    names = _SETS.get(text)
    if names is None:
        names = frozenset(text.split(",")) if text else frozenset()
        if len(_SETS) >= _CACHE_LIMIT:
            _SETS.clear()
        _SETS[text] = names
    return names


_set = object.__setattr__


def _model(row: Any) -> CatalogModel:
    # CatalogModel.restore(...) with every field set directly (this runs once per stored row)
    model: CatalogModel = object.__new__(CatalogModel)
    _set(model, "model_id", row.model_id)
    _set(model, "provider", row.provider)
    _set(model, "upstream_model", row.upstream_model)
    _set(model, "input_price", _price(row.input_price_e18))
    _set(model, "output_price", _price(row.output_price_e18))
    _set(model, "context_window", row.context_window)
    _set(model, "max_output_tokens", row.max_output_tokens)
    _set(model, "capabilities", _split(row.capabilities))
    _set(model, "available", bool(row.available))
    _set(model, "local_overrides", _split(row.local_overrides))
    _set(model, "source", row.source)
    _set(model, "created_at", row.created_at)
    _set(model, "updated_at", row.updated_at)
    _set(model, "unavailable_since", row.unavailable_since)
    return model


_SELECT = sa.select(_models).order_by(_models.c.model_id)
_REVISION = sa.select(_state.c.revision).where(_state.c.name == CATALOG_REVISION_NAME)
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

    async def revision(self) -> int | None:
        """The catalog revision: a counter every write to the models table increases (kept by
        triggers, so writes of other replicas and of plain SQL count too); ``None`` if the
        revision row is missing (then nothing can be concluded from it).
        """
        try:
            async with self._db.connect() as conn:
                value = (await conn.execute(_REVISION)).scalar()
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc
        return int(value) if value is not None else None

    async def apply(self, inserts: Sequence[CatalogModel], updates: Sequence[CatalogModel]) -> None:
        """Insert and update rows in one transaction (nothing at all for an empty change set)."""
        await self.apply_tracked(inserts, updates)

    async def apply_tracked(
        self, inserts: Sequence[CatalogModel], updates: Sequence[CatalogModel]
    ) -> tuple[int | None, int | None]:
        """:meth:`apply`, returning the catalog revision just before and just after this write.

        ``before`` is the revision the rows had when this transaction began writing (so a
        caller that read the rows at revision ``before`` knows no one wrote in between), and
        ``after`` the revision this write left. Either is ``None`` when it cannot be known; both
        are ``None`` for an empty change set (nothing is written, no transaction is opened).
        """
        if not inserts and not updates:
            return None, None
        insert_params = [_params(m) for m in inserts]
        update_params = []
        for m in updates:
            p = _params(m)
            p["b_model_id"] = p.pop("model_id")
            del p["created_at"]
            update_params.append(p)
        before: int | None = None
        try:
            async with self._db.engine.begin() as conn:
                postgres = conn.dialect.name == "postgresql"
                if postgres:
                    # lock the counter first: a concurrent writer's trigger waits for this commit
                    before = (await conn.execute(_REVISION.with_for_update())).scalar()
                rows = len(insert_params)
                if insert_params:
                    await conn.execute(_INSERT, insert_params)
                if update_params:
                    result = await conn.execute(_UPDATE, update_params)
                    if conn.dialect.supports_sane_multi_rowcount:
                        if result.rowcount != len(update_params):
                            raise ConflictError("catalog.conflict", model="(changed concurrently)")
                        rows += result.rowcount
                    else:
                        rows = -1
                after = (await conn.execute(_REVISION)).scalar()
                if not postgres and after is not None and rows >= 0:
                    # SQLite: one trigger run per row written, and this transaction holds the
                    # write lock from its first write on
                    before = after - rows
        except sa.exc.IntegrityError:
            raise ConflictError("catalog.conflict", model="(inserted concurrently)") from None
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc
        self._rows_written += len(insert_params) + len(update_params)
        return (
            int(before) if before is not None else None,
            int(after) if after is not None else None,
        )


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

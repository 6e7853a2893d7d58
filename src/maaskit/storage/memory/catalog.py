"""In-process catalog stores: models, the sync lease and the sync audit trail.

:class:`MemoryCatalogStore` applies a change set copy-on-write (a new dict is built, then swapped
in), so a failure half-way leaves the catalog untouched, like the SQL transaction does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from maaskit.errors import ConflictError
from maaskit.services.catalog import CatalogModel, SyncRun

__all__ = ["MemoryCatalogStore", "MemorySyncLock", "MemorySyncRunStore"]


class MemoryCatalogStore:
    """:class:`~maaskit.storage.ports.catalog.CatalogStore` in a dict (one process)."""

    def __init__(self) -> None:
        self._models: dict[str, CatalogModel] = {}
        self._rows_written = 0

    def __repr__(self) -> str:
        return f"MemoryCatalogStore({len(self._models)} models)"

    @property
    def rows_written(self) -> int:
        """Rows inserted or updated since creation."""
        return self._rows_written

    async def list_models(self) -> list[CatalogModel]:
        """Every model, sorted by id."""
        return [self._models[k] for k in sorted(self._models)]

    async def get(self, model_id: str) -> CatalogModel | None:
        """The model, or ``None``."""
        return self._models.get(model_id)

    async def apply(self, inserts: Sequence[CatalogModel], updates: Sequence[CatalogModel]) -> None:
        """Insert and replace rows atomically (copy-on-write)."""
        if not inserts and not updates:
            return
        new = dict(self._models)
        for model in inserts:
            if model.model_id in new:
                raise ConflictError("catalog.conflict", model=model.model_id)
            self._write(new, model)
        for model in updates:
            if model.model_id not in new:
                raise ConflictError("catalog.conflict", model=model.model_id)
            self._write(new, model)
        self._models = new
        self._rows_written += len(inserts) + len(updates)

    def _write(self, target: dict[str, CatalogModel], model: CatalogModel) -> None:
        """Put one row into *target* (a hook tests use to inject a failure mid-apply)."""
        target[model.model_id] = model


class MemorySyncLock:
    """:class:`~maaskit.storage.ports.catalog.SyncLock` in a dict (replicas sharing one object)."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, datetime]] = {}

    def __repr__(self) -> str:
        return f"MemorySyncLock({len(self._leases)} leases)"

    async def acquire(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        """Take or renew the lease."""
        held = self._leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[name] = (owner, until)
        return True

    async def release(self, name: str, owner: str) -> None:
        """Give the lease up if *owner* holds it."""
        held = self._leases.get(name)
        if held is not None and held[0] == owner:
            del self._leases[name]

    async def holder(self, name: str, now: datetime) -> str | None:
        """The unexpired lease's owner."""
        held = self._leases.get(name)
        return held[0] if held is not None and held[1] > now else None


class MemorySyncRunStore:
    """:class:`~maaskit.storage.ports.catalog.SyncRunStore` in a list (bounded)."""

    def __init__(self, max_runs: int = 10_000) -> None:
        self._runs: list[SyncRun] = []
        self._max = max_runs

    def __repr__(self) -> str:
        return f"MemorySyncRunStore({len(self._runs)} runs)"

    async def add(self, run: SyncRun) -> None:
        """Record a run (the oldest are dropped beyond ``max_runs``)."""
        self._runs.append(run)
        if len(self._runs) > self._max:
            del self._runs[: len(self._runs) - self._max]

    async def recent(self, limit: int = 20) -> list[SyncRun]:
        """The latest runs, newest first."""
        return list(reversed(self._runs[-limit:])) if limit > 0 else []

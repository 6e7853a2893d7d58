"""The store Protocols behind :mod:`maaskit.services.catalog` and :mod:`maaskit.services.integration`.

* :class:`CatalogStore` - the model catalog. The service computes the difference between the
  catalog and upstream and hands the store only the rows that change, in one
  :meth:`CatalogStore.apply` call that is atomic: all of it is written or none of it.
* :class:`SyncLock` - a lease that makes scheduled syncs single-flight across replicas.
* :class:`SyncRunStore` - the audit trail of sync runs.

Backends: :mod:`maaskit.storage.memory.catalog` and :mod:`maaskit.storage.sql.catalog`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from maaskit.services.catalog import CatalogModel, SyncRun

__all__ = ["CatalogStore", "SyncLock", "SyncRunStore"]


@runtime_checkable
class CatalogStore(Protocol):
    """Durable storage of :class:`~maaskit.services.catalog.CatalogModel` rows."""

    @property
    def rows_written(self) -> int:
        """Rows inserted or updated by this store object since it was created (a test aid)."""
        ...

    async def list_models(self) -> list[CatalogModel]:
        """Every model, available or not, sorted by ``model_id``."""
        ...

    async def get(self, model_id: str) -> CatalogModel | None:
        """The model with *model_id*, or ``None``."""
        ...

    async def apply(self, inserts: Sequence[CatalogModel], updates: Sequence[CatalogModel]) -> None:
        """Insert *inserts* and replace *updates* (matched by ``model_id``) in one transaction.

        Nothing is written when both are empty. Raises
        :class:`~maaskit.errors.ConflictError` (``catalog.conflict``) when an insert exists
        already or an update does not; nothing is then written.
        """
        ...


@runtime_checkable
class SyncLock(Protocol):
    """A named lease with an owner and an expiry, for single-flight work across replicas."""

    async def acquire(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        """Take (or renew, for the same *owner*) the lease *name* until *until*.

        Succeeds when the lease is free, expired at *now*, or already held by *owner*.
        """
        ...

    async def release(self, name: str, owner: str) -> None:
        """Give the lease up if *owner* holds it (otherwise nothing happens)."""
        ...

    async def holder(self, name: str, now: datetime) -> str | None:
        """The owner holding the unexpired lease *name*, or ``None``."""
        ...


@runtime_checkable
class SyncRunStore(Protocol):
    """Append-only audit trail of sync runs."""

    async def add(self, run: SyncRun) -> None:
        """Record *run*."""
        ...

    async def recent(self, limit: int = 20) -> list[SyncRun]:
        """The latest runs, newest first."""
        ...

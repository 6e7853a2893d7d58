"""The store Protocol behind :mod:`maaskit.services.usage`.

:class:`maaskit.services.usage.DefaultUsageService` buffers usage records in memory and writes
them in batches to a :class:`UsageStore`: in-process in :mod:`maaskit.storage.memory.usage`,
SQLite/PostgreSQL in :mod:`maaskit.storage.sql.usage`. Both pass one contract suite.

A store must be **idempotent by request id**: writing a record whose ``request_id`` is already
stored (in the same batch, an earlier batch, or by another replica) keeps the first one and is
not an error. The service relies on this to requeue a batch whose write failed or was cancelled
half-way without ever counting a request twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from maaskit.services.usage import UsageQuery, UsageRecord, UsageRow

__all__ = ["UsageStore"]


@runtime_checkable
class UsageStore(Protocol):
    """Durable storage of usage records with aggregated reports."""

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        """Store *records* atomically (all or none), skipping any ``request_id`` already stored.

        Duplicates inside *records* are stored once (the first wins). Raises
        :class:`maaskit.errors.UnavailableError` when the storage cannot be reached; nothing of
        the batch is then stored.
        """
        ...

    async def get(self, request_id: str) -> UsageRecord | None:
        """The stored record with *request_id*, or ``None``."""
        ...

    async def aggregate(self, query: UsageQuery) -> list[UsageRow]:
        """Aggregate the records matching *query* (``start <= created_at < end`` plus filters).

        Returns one :class:`UsageRow` per distinct combination of ``query.group_by`` dimensions
        (one row with every dimension ``None`` when ``group_by`` is empty, even if nothing
        matches), sorted by the dimensions in ``group_by`` order with ``None`` last.
        """
        ...

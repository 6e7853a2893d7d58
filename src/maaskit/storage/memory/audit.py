"""In-process, append-only :class:`~maaskit.storage.ports.audit.AuditStore` (tests, single process)."""

from __future__ import annotations

import asyncio

import attrs

from maaskit.storage.ports.audit import AuditQuery, StoredAuditEvent

__all__ = ["MemoryAuditStore"]


class MemoryAuditStore:
    """Keeps every event in a list; ids are 1, 2, 3..."""

    def __init__(self) -> None:
        self._events: list[StoredAuditEvent] = []
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"MemoryAuditStore(events={len(self._events)})"

    async def append(self, event: StoredAuditEvent) -> StoredAuditEvent:
        """Store *event* with the next id."""
        async with self._lock:
            stored = attrs.evolve(event, id=len(self._events) + 1)
            self._events.append(stored)
            return stored

    async def query(self, query: AuditQuery) -> list[StoredAuditEvent]:
        """Matching events, newest first."""
        result: list[StoredAuditEvent] = []
        for event in sorted(self._events, key=lambda e: (e.created_at, e.id), reverse=True):
            if query.actor is not None and event.actor != query.actor:
                continue
            if query.target is not None and event.target != query.target:
                continue
            if query.action is not None and event.action != query.action:
                continue
            if query.since is not None and event.created_at < query.since:
                continue
            if query.until is not None and event.created_at >= query.until:
                continue
            result.append(event)
            if len(result) >= query.limit:
                break
        return result

"""Store Protocol behind :mod:`maaskit.services.audit`.

The audit store is append-only: it can add an event and read events back, and nothing else. There
is deliberately no update or delete method, so no code path in maaskit can rewrite history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["AuditQuery", "AuditStore", "StoredAuditEvent"]


def _details(value: Mapping[str, str | int | bool]) -> dict[str, str | int | bool]:
    return dict(value)


@attrs.frozen
class StoredAuditEvent:
    """One audit event as the store keeps it (details already filtered by the service).

    Attributes:
        id: store-assigned, strictly increasing sequence number (``0`` before it is stored).
        created_at: when the action happened.
        actor: who acted (a user id, ``"system"`` or ``"anonymous"``).
        action: what happened, a dotted name such as ``"rbac.role_assigned"``.
        target: what it happened to (a user id, role name, request id...).
        outcome: ``"success"``, ``"failure"`` or ``"denied"``.
        details: small, non-secret key/value pairs.
    """

    id: int
    created_at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: Mapping[str, str | int | bool] = attrs.field(factory=dict, converter=_details, hash=False)


@attrs.frozen
class AuditQuery:
    """Filters for :meth:`AuditStore.query`; ``None`` means "any".

    ``since`` is inclusive and ``until`` exclusive; results are newest first.
    """

    actor: str | None = None
    target: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


@runtime_checkable
class AuditStore(Protocol):
    """Append-only storage of audit events."""

    async def append(self, event: StoredAuditEvent) -> StoredAuditEvent:
        """Store *event* (its ``id`` is ignored) and return it with the assigned id."""
        ...

    async def query(self, query: AuditQuery) -> list[StoredAuditEvent]:
        """Events matching *query*, newest first (ties broken by id, highest first)."""
        ...

"""Store Protocol behind :mod:`maaskit.services.access_requests`."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["AccessRequestRecord", "AccessRequestStore"]


@attrs.frozen
class AccessRequestRecord:
    """One request for access.

    Attributes:
        id: request id (``acr_...``).
        user_id: who asks.
        reason: why (free text from the user).
        status: ``"pending"``, ``"approved"`` or ``"rejected"``.
        created_at: when it was made.
        updated_at: last change.
        decided_at: when it was approved or rejected.
        decided_by: the admin who decided.
        role: the role granted on approval.
        decision_reason: the admin's reason on rejection.
    """

    id: str
    user_id: str
    reason: str
    status: str
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    role: str | None = None
    decision_reason: str | None = None


@runtime_checkable
class AccessRequestStore(Protocol):
    """Access requests; at most one ``pending`` request per user."""

    async def insert(self, request: AccessRequestRecord) -> bool:
        """Store a new request; ``False`` (nothing written) when the user already has a pending one."""
        ...

    async def get(self, request_id: str) -> AccessRequestRecord | None:
        """The request, or ``None``."""
        ...

    async def list(
        self, *, status: str | None = None, user_id: str | None = None, limit: int = 100
    ) -> builtins.list[AccessRequestRecord]:
        """Requests matching the filters, newest first."""
        ...

    async def decide(self, decided: AccessRequestRecord, *, expected_status: str) -> bool:
        """Replace the request with *decided* only if its stored status is *expected_status*.

        Returns ``False`` (nothing written) when the request is missing or its status differs, so two
        concurrent decisions on one request cannot both succeed.
        """
        ...

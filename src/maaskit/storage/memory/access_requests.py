"""In-process :class:`~maaskit.storage.ports.access_requests.AccessRequestStore`."""

from __future__ import annotations

import builtins

from maaskit.storage.ports.access_requests import AccessRequestRecord

__all__ = ["MemoryAccessRequestStore"]


class MemoryAccessRequestStore:
    """Access requests in a dictionary (insertion order kept for ties)."""

    def __init__(self) -> None:
        self._requests: dict[str, AccessRequestRecord] = {}

    def __repr__(self) -> str:
        return f"MemoryAccessRequestStore(requests={len(self._requests)})"

    async def insert(self, request: AccessRequestRecord) -> bool:
        """Store *request* unless its id exists or the user already has a pending request."""
        if request.id in self._requests:
            return False
        if request.status == "pending" and any(
            r.user_id == request.user_id and r.status == "pending" for r in self._requests.values()
        ):
            return False
        self._requests[request.id] = request
        return True

    async def get(self, request_id: str) -> AccessRequestRecord | None:
        """The request, or ``None``."""
        return self._requests.get(request_id)

    async def list(
        self, *, status: str | None = None, user_id: str | None = None, limit: int = 100
    ) -> builtins.list[AccessRequestRecord]:
        """Matching requests, newest first."""
        items = [
            r
            for r in reversed(self._requests.values())
            if (status is None or r.status == status) and (user_id is None or r.user_id == user_id)
        ]
        items.sort(key=lambda r: r.created_at, reverse=True)
        return items[:limit]

    async def decide(self, decided: AccessRequestRecord, *, expected_status: str) -> bool:
        """Replace the request if its status is still *expected_status*."""
        current = self._requests.get(decided.id)
        if current is None or current.status != expected_status:
            return False
        self._requests[decided.id] = decided
        return True

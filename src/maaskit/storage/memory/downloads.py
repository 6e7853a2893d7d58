"""In-process :class:`~maaskit.storage.ports.downloads.DownloadStore`."""

from __future__ import annotations

import builtins

import attrs

from maaskit.storage.ports.downloads import DownloadRecord

__all__ = ["MemoryDownloadStore"]


class MemoryDownloadStore:
    """Download requests in a dictionary (lost on restart: use the SQL store to resume downloads)."""

    def __init__(self) -> None:
        self._records: dict[str, DownloadRecord] = {}

    def __repr__(self) -> str:
        return f"MemoryDownloadStore(requests={len(self._records)})"

    async def insert(self, record: DownloadRecord) -> None:
        """Store a new request; an existing id is refused with :class:`KeyError`."""
        if record.id in self._records:
            raise KeyError(record.id)
        self._records[record.id] = record

    async def get(self, request_id: str) -> DownloadRecord | None:
        """The request, or ``None``."""
        return self._records.get(request_id)

    async def list(
        self, *, statuses: tuple[str, ...] | None = None, repo_id: str | None = None, limit: int = 100
    ) -> builtins.list[DownloadRecord]:
        """Matching requests, oldest first."""
        items = [
            r
            for r in self._records.values()
            if (statuses is None or r.status in statuses) and (repo_id is None or r.repo_id == repo_id)
        ]
        items.sort(key=lambda r: (r.created_at, r.id))
        return items[:limit]

    async def update(self, record: DownloadRecord) -> bool:
        """Replace the mutable fields of the stored request."""
        current = self._records.get(record.id)
        if current is None:
            return False
        self._records[record.id] = attrs.evolve(
            current,
            status=record.status,
            total_bytes=record.total_bytes,
            downloaded_bytes=record.downloaded_bytes,
            error_code=record.error_code,
            updated_at=record.updated_at,
        )
        return True

    async def delete(self, request_id: str) -> bool:
        """Remove a request."""
        return self._records.pop(request_id, None) is not None

"""Store Protocol behind :mod:`maaskit.services.hub`: tracked model-file download requests."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Final, Protocol, runtime_checkable

import attrs

__all__ = ["ACTIVE_STATUSES", "DOWNLOAD_STATUSES", "DownloadRecord", "DownloadStore"]

#: Every status a download request can have.
DOWNLOAD_STATUSES: Final = ("pending", "running", "completed", "failed")
#: Statuses :meth:`maaskit.services.hub.DefaultHubService.resume_pending` picks up after a restart.
ACTIVE_STATUSES: Final = ("pending", "running")


@attrs.frozen
class DownloadRecord:
    """One download request as stored (BodhiApp's ``download_requests``).

    Attributes:
        id: request id (``dl_...``).
        repo_id: hub repository, ``owner/name``.
        filename: file inside the repository (``/``-separated).
        revision: branch, tag or commit the caller asked for.
        status: ``pending``, ``running``, ``completed`` or ``failed``.
        total_bytes: file size once known.
        downloaded_bytes: bytes received so far (in this attempt).
        error_code: the MaasError code of the last failure (``hub.network``...), else ``None``.
        endpoint: the hub base URL used (never carries credentials).
        created_at: when the request was made.
        updated_at: last change.
    """

    id: str
    repo_id: str
    filename: str
    revision: str
    status: str
    created_at: datetime
    updated_at: datetime
    total_bytes: int | None = None
    downloaded_bytes: int = 0
    error_code: str | None = None
    endpoint: str | None = None


@runtime_checkable
class DownloadStore(Protocol):
    """Download requests, written as they progress so a host can show them and resume them."""

    async def insert(self, record: DownloadRecord) -> None:
        """Store a new request (its id is new)."""
        ...

    async def get(self, request_id: str) -> DownloadRecord | None:
        """The request, or ``None``."""
        ...

    async def list(
        self, *, statuses: tuple[str, ...] | None = None, repo_id: str | None = None, limit: int = 100
    ) -> builtins.list[DownloadRecord]:
        """Requests matching the filters, oldest first (the order :meth:`resume_pending` works in)."""
        ...

    async def update(self, record: DownloadRecord) -> bool:
        """Replace the mutable fields (status, sizes, error code, updated_at) of the stored request.

        Returns ``False`` (nothing written) when the request does not exist.
        """
        ...

    async def delete(self, request_id: str) -> bool:
        """Remove a request; ``False`` if it did not exist."""
        ...

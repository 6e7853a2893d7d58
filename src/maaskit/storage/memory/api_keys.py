"""In-process API key store and invalidation bus (single process, tests, embedded use).

Example::

    store = MemoryApiKeyStore()
    bus = MemoryKeyInvalidationBus()      # share one bus between two services to simulate replicas
"""

from __future__ import annotations

import builtins
from collections.abc import Callable

import structlog

from maaskit.errors import ConflictError
from maaskit.storage.ports.api_keys import ApiKeyRecord, InvalidationListener

__all__ = ["MemoryApiKeyStore", "MemoryKeyInvalidationBus"]

log = structlog.get_logger(__name__)


class MemoryApiKeyStore:
    """An :class:`~maaskit.storage.ports.api_keys.ApiKeyStore` in a few dicts.

    Every method runs without awaiting anything, so each one is atomic under asyncio.
    """

    __slots__ = ("_by_digest", "_records")

    def __init__(self) -> None:
        self._records: dict[str, ApiKeyRecord] = {}
        self._by_digest: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return f"MemoryApiKeyStore({len(self._records)} keys)"

    def __len__(self) -> int:
        return len(self._records)

    def _check_digests_free(self, record: ApiKeyRecord) -> None:
        for digest in (record.digest, record.previous_digest):
            if digest is not None:
                owner = self._by_digest.get(digest)
                if owner is not None and owner != record.id:
                    raise ConflictError("api_key.conflict", key_id=record.id)

    def _index(self, record: ApiKeyRecord) -> None:
        self._by_digest[record.digest] = record.id
        if record.previous_digest is not None:
            self._by_digest[record.previous_digest] = record.id

    def _unindex(self, record: ApiKeyRecord) -> None:
        for digest in (record.digest, record.previous_digest):
            if digest is not None and self._by_digest.get(digest) == record.id:
                del self._by_digest[digest]

    async def insert(self, record: ApiKeyRecord) -> None:
        """Store a new record; ``api_key.conflict`` if its id or digest exists."""
        if record.id in self._records:
            raise ConflictError("api_key.conflict", key_id=record.id)
        self._check_digests_free(record)
        self._records[record.id] = record
        self._index(record)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record with *key_id*, or ``None``."""
        return self._records.get(key_id)

    async def find_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        """The record whose current or previous digest is *digest*, or ``None``."""
        key_id = self._by_digest.get(digest)
        return None if key_id is None else self._records.get(key_id)

    async def update(self, record: ApiKeyRecord, *, expected_version: int) -> bool:
        """Compare-and-set on ``version``; ``False`` (nothing written) on a mismatch."""
        current = self._records.get(record.id)
        if current is None or current.version != expected_version:
            return False
        self._check_digests_free(record)
        self._unindex(current)
        self._records[record.id] = record
        self._index(record)
        return True

    async def list(
        self, *, owner_id: str | None = None, team_id: str | None = None, include_revoked: bool = False
    ) -> builtins.list[ApiKeyRecord]:
        """Records matching every given filter, ordered by ``created_at`` then ``id``."""
        found = [
            r
            for r in self._records.values()
            if (owner_id is None or r.owner_id == owner_id)
            and (team_id is None or r.team_id == team_id)
            and (include_revoked or r.revoked_at is None)
        ]
        found.sort(key=lambda r: (r.created_at, r.id))
        return found

    async def ping(self) -> None:
        """Always healthy."""


class MemoryKeyInvalidationBus:
    """A :class:`~maaskit.storage.ports.api_keys.KeyInvalidationBus` inside one process.

    :meth:`publish` calls every listener synchronously, so two services sharing one bus behave like
    two replicas connected by an instant, loss-free channel.
    """

    __slots__ = ("_listeners", "published")

    def __init__(self) -> None:
        self._listeners: list[InvalidationListener] = []
        #: Every key id published so far (handy in tests).
        self.published: list[str] = []

    def __repr__(self) -> str:
        return f"MemoryKeyInvalidationBus({len(self._listeners)} listeners)"

    async def publish(self, key_id: str) -> None:
        """Deliver *key_id* to every listener now."""
        self.published.append(key_id)
        self._deliver(key_id)

    def clear_all(self) -> None:
        """Deliver "drop everything" (``None``) to every listener, as a reconnect would."""
        self._deliver(None)

    def _deliver(self, key_id: str | None) -> None:
        for listener in builtins.list(self._listeners):
            try:
                listener(key_id)
            except Exception:  # a broken listener must not starve the others
                log.exception("api_key.invalidation_listener_failed")

    def add_listener(self, listener: InvalidationListener) -> Callable[[], None]:
        """Register *listener*; returns its unregister function."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

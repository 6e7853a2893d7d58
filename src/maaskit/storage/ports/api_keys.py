"""Store and invalidation-bus Protocols behind :mod:`maaskit.services.api_keys`.

The service never imports a concrete backend: it takes an :class:`ApiKeyStore` (memory in
:mod:`maaskit.storage.memory.api_keys`, SQL in :mod:`maaskit.storage.sql.api_keys`) and, when
several replicas share one store, a :class:`KeyInvalidationBus` (memory for tests, Redis pub/sub in
:mod:`maaskit.storage.redis.api_keys`) that tells every replica to drop a key from its cache.

Stores hold :class:`ApiKeyRecord` objects: the key's public fields plus its digests (never the
secret), the rotation state and an optimistic-concurrency ``version``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["ApiKeyRecord", "ApiKeyStore", "InvalidationListener", "KeyInvalidationBus"]


def _frozen_models(value: Iterable[str]) -> frozenset[str]:
    return value if isinstance(value, frozenset) else frozenset(value)


def _metadata(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen
class ApiKeyRecord:
    """One stored API key: everything but the secret, which is never stored.

    Attributes:
        id: stable key id (survives rotation).
        digest: HMAC-SHA256 of the current secret (32 bytes).
        hint: display hint such as ``mk_…abcd``.
        owner_id: the owning user (or service account).
        team_id: the team the key spends for, if any.
        name: a human label.
        allowed_models: models the key may call; empty means every model.
        budget_micros: spend limit in micro-units, ``None`` for no key-level limit.
        rpm_limit: requests per minute, ``None`` for no key-level limit.
        tpm_limit: tokens per minute, ``None`` for no key-level limit.
        expires_at: when the key stops working, ``None`` for never.
        enabled: ``False`` while the key is switched off (reversible).
        revoked_at: when the key was revoked (irreversible), else ``None``.
        created_at: creation time.
        updated_at: last change.
        metadata: free-form string pairs (never secrets).
        previous_digest: digest of the secret replaced by the last rotation, while it may still be in
            its grace period; ``None`` when there is none.
        previous_valid_until: end of the previous secret's grace period.
        rotation_counter: how many times the key was rotated.
        rotation_idempotency_digest: keyed digest of the idempotency key of the last rotation.
        version: optimistic-concurrency counter, incremented by every update.
    """

    id: str
    digest: bytes = attrs.field(repr=False)
    hint: str
    owner_id: str
    team_id: str | None
    name: str
    allowed_models: frozenset[str] = attrs.field(converter=_frozen_models)
    budget_micros: int | None
    rpm_limit: int | None
    tpm_limit: int | None
    expires_at: datetime | None
    enabled: bool
    revoked_at: datetime | None
    created_at: datetime
    updated_at: datetime
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_metadata, hash=False)
    previous_digest: bytes | None = attrs.field(default=None, repr=False)
    previous_valid_until: datetime | None = None
    rotation_counter: int = 0
    rotation_idempotency_digest: bytes | None = attrs.field(default=None, repr=False)
    version: int = 1


@runtime_checkable
class ApiKeyStore(Protocol):
    """Durable storage of :class:`ApiKeyRecord` objects.

    Implementations must find a record by its current *or* previous digest, and must make
    :meth:`update` a compare-and-set on ``version`` so concurrent changes never overwrite each other.
    """

    async def insert(self, record: ApiKeyRecord) -> None:
        """Store a new record.

        Raises:
            ConflictError: ``api_key.conflict`` if the id or the digest already exists.
        """
        ...

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record with *key_id*, or ``None``."""
        ...

    async def find_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        """The record whose current or previous digest is *digest*, or ``None``."""
        ...

    async def update(self, record: ApiKeyRecord, *, expected_version: int) -> bool:
        """Replace the stored record with id ``record.id`` if its version is *expected_version*.

        Returns:
            ``True`` if written; ``False`` if the record is missing or its version differs
            (someone else changed it first), in which case nothing was written.
        """
        ...

    async def list(
        self, *, owner_id: str | None = None, team_id: str | None = None, include_revoked: bool = False
    ) -> builtins.list[ApiKeyRecord]:
        """Records matching every given filter, ordered by ``created_at`` then ``id``."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` if the store cannot be reached."""
        ...


#: Called with a key id to drop, or ``None`` to drop every cached key (e.g. after a reconnect).
InvalidationListener = Callable[[str | None], None]


@runtime_checkable
class KeyInvalidationBus(Protocol):
    """Carries "drop key X from your cache" messages between replicas.

    Every replica's :class:`~maaskit.services.api_keys.DefaultApiKeyService` publishes the key id it
    revoked, disabled, rotated or changed; every replica's listener drops that key from its local
    validation cache. A listener receives ``None`` when messages may have been lost (a reconnect):
    it must then clear its whole cache.
    """

    async def publish(self, key_id: str) -> None:
        """Tell every subscribed replica (this one included) to drop *key_id*."""
        ...

    def add_listener(self, listener: InvalidationListener) -> Callable[[], None]:
        """Register *listener*; returns a function that unregisters it."""
        ...

    async def start(self) -> None:
        """Start receiving messages; returns once subscribed. Idempotent."""
        ...

    async def stop(self) -> None:
        """Stop receiving messages and release connections. Idempotent."""
        ...

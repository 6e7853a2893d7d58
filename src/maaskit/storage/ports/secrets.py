"""Store Protocol behind :mod:`maaskit.services.secrets`: opaque encrypted envelopes by name.

The store never sees a plaintext or a key: it keeps each secret's name, its AES-256-GCM envelope
and the id of the master key the envelope is under (so master-key rotation can find the rows still
to re-encrypt). Backends: :mod:`maaskit.storage.memory.secrets`, :mod:`maaskit.storage.sql.secrets`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["SecretRecord", "SecretStore"]


@attrs.frozen
class SecretRecord:
    """One stored secret.

    Attributes:
        name: the secret's unique name (not secret; bound into the ciphertext).
        envelope: the versioned, encrypted envelope (see :mod:`maaskit.services.secrets`).
        key_id: the id of the master key that encrypted it.
        updated_at: the last write.
    """

    name: str
    envelope: bytes = attrs.field(repr=False)
    key_id: str
    updated_at: datetime


@runtime_checkable
class SecretStore(Protocol):
    """Persistence for encrypted secrets."""

    async def put(self, record: SecretRecord) -> None:
        """Insert or replace the secret called ``record.name``."""
        ...

    async def get(self, name: str) -> SecretRecord | None:
        """The record or ``None``."""
        ...

    async def delete(self, name: str) -> bool:
        """Delete; ``True`` when it existed."""
        ...

    async def list_names(self) -> list[str]:
        """Every name, sorted."""
        ...

    async def names_not_under(self, key_id: str, limit: int) -> list[str]:
        """Up to *limit* names (sorted) whose ``key_id`` differs from *key_id*."""
        ...

    async def replace_if(self, name: str, expected_envelope: bytes, record: SecretRecord) -> bool:
        """Replace the record only if its envelope is still *expected_envelope* (compare-and-set)."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when the store cannot be reached."""
        ...

"""In-process :class:`~maaskit.storage.ports.secrets.SecretStore` (tests, single-process apps)."""

from __future__ import annotations

import threading

from maaskit.storage.ports.secrets import SecretRecord

__all__ = ["MemorySecretStore"]


class MemorySecretStore:
    """Encrypted envelopes in a dictionary, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, SecretRecord] = {}

    def __repr__(self) -> str:
        return f"MemorySecretStore(secrets={len(self._rows)})"

    async def put(self, record: SecretRecord) -> None:
        """Insert or replace."""
        with self._lock:
            self._rows[record.name] = record

    async def get(self, name: str) -> SecretRecord | None:
        """The record or ``None``."""
        return self._rows.get(name)

    async def delete(self, name: str) -> bool:
        """Delete one record."""
        with self._lock:
            return self._rows.pop(name, None) is not None

    async def list_names(self) -> list[str]:
        """Every name, sorted."""
        return sorted(self._rows)

    async def names_not_under(self, key_id: str, limit: int) -> list[str]:
        """Names whose key id differs from *key_id*."""
        return sorted(n for n, r in self._rows.items() if r.key_id != key_id)[:limit]

    async def replace_if(self, name: str, expected_envelope: bytes, record: SecretRecord) -> bool:
        """Compare-and-set on the envelope."""
        with self._lock:
            current = self._rows.get(name)
            if current is None or current.envelope != expected_envelope:
                return False
            self._rows[name] = record
            return True

    async def ping(self) -> None:
        """Always reachable."""

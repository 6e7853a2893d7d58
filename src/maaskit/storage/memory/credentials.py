"""In-process :class:`~maaskit.storage.ports.credentials.CredentialStore`."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

import attrs

from maaskit.storage.ports.credentials import CredentialRecord, CredentialUsage, CredentialUsageDelta

__all__ = ["MemoryCredentialStore"]


class MemoryCredentialStore:
    """Credential definitions and usage in dictionaries (lost on restart; use the SQL store to keep them)."""

    def __init__(self) -> None:
        self._records: dict[str, CredentialRecord] = {}
        self._usage: dict[str, CredentialUsage] = {}

    def __repr__(self) -> str:
        return f"MemoryCredentialStore(credentials={len(self._records)})"

    async def insert(self, record: CredentialRecord) -> None:
        """Store a new credential; an existing id is refused with :class:`KeyError`."""
        if record.id in self._records:
            raise KeyError(record.id)
        self._records[record.id] = record

    async def get(self, credential_id: str) -> CredentialRecord | None:
        """The credential, or ``None``."""
        return self._records.get(credential_id)

    async def list(self, *, upstream: str | None = None) -> builtins.list[CredentialRecord]:
        """Every credential (of *upstream*), oldest first."""
        items = [r for r in self._records.values() if upstream is None or r.upstream == upstream]
        items.sort(key=lambda r: (r.created_at, r.id))
        return items

    def _update(self, record: CredentialRecord) -> bool:
        current = self._records.get(record.id)
        if current is None:
            return False
        self._records[record.id] = attrs.evolve(
            current,
            name=record.name,
            header=record.header,
            header_format=record.header_format,
            weight=record.weight,
            models=record.models,
            enabled=record.enabled,
            disabled_reason=record.disabled_reason,
            updated_at=record.updated_at,
        )
        return True

    async def update(self, record: CredentialRecord) -> bool:
        """Replace the mutable fields of the stored credential."""
        return self._update(record)

    async def delete(self, credential_id: str) -> bool:
        """Remove a credential and its usage."""
        self._usage.pop(credential_id, None)
        return self._records.pop(credential_id, None) is not None

    async def add_usage(
        self, deltas: Sequence[CredentialUsageDelta], records: Sequence[CredentialRecord] = ()
    ) -> None:
        """Add the deltas to the totals and write the records."""
        for record in records:
            self._update(record)
        for d in deltas:
            if d.credential_id not in self._records:
                continue
            old = self._usage.get(d.credential_id) or CredentialUsage(d.credential_id)
            failures = dict(old.failures)
            for status, count in d.failures.items():
                failures[status] = failures.get(status, 0) + count
            self._usage[d.credential_id] = CredentialUsage(
                d.credential_id,
                requests=old.requests + d.requests,
                successes=old.successes + d.successes,
                failures=failures,
                tokens=old.tokens + d.tokens,
                last_used_at=d.last_used_at if d.last_used_at is not None else old.last_used_at,
                last_failure_at=(d.last_failure_at if d.last_failure_at is not None else old.last_failure_at),
                cooldown_until=d.cooldown_until if d.set_cooldown else old.cooldown_until,
            )

    async def usage(self) -> dict[str, CredentialUsage]:
        """Every used credential's totals."""
        return dict(self._usage)

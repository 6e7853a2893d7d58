"""Store Protocol behind :mod:`maaskit.services.settings`: the dynamic setting overrides.

Backends: memory (:mod:`maaskit.storage.memory.settings`, one process, tests) and SQL
(:mod:`maaskit.storage.sql.settings`, table ``maaskit_setting_overrides``, shared by replicas).
Values are stored as JSON text; the service encodes and validates them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["OverrideRecord", "SettingOverrideStore"]


@attrs.frozen
class OverrideRecord:
    """One stored override.

    Attributes:
        name: the setting's field name (``log_level``).
        value_json: the validated value as JSON text (``"\\"debug\\""``).
        updated_at: when it was last written (aware UTC).
        updated_by: who wrote it (a user id or name), if known.
    """

    name: str
    value_json: str
    updated_at: datetime
    updated_by: str | None = None


@runtime_checkable
class SettingOverrideStore(Protocol):
    """Persistent storage of setting overrides, keyed by setting name."""

    async def load_all(self) -> list[OverrideRecord]:
        """Every stored override, sorted by name."""
        ...

    async def put(self, record: OverrideRecord) -> None:
        """Insert or replace the override of ``record.name`` (atomic)."""
        ...

    async def delete(self, name: str) -> bool:
        """Remove the override of *name*; ``True`` if there was one."""
        ...

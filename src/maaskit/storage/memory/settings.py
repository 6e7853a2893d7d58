"""In-process :class:`~maaskit.storage.ports.settings.SettingOverrideStore` (tests, single process)."""

from __future__ import annotations

from maaskit.storage.ports.settings import OverrideRecord

__all__ = ["MemorySettingOverrideStore"]


class MemorySettingOverrideStore:
    """Setting overrides kept in a dict; lost when the process exits."""

    def __init__(self) -> None:
        self._records: dict[str, OverrideRecord] = {}

    def __repr__(self) -> str:
        return f"MemorySettingOverrideStore({len(self._records)} overrides)"

    async def load_all(self) -> list[OverrideRecord]:
        """Every stored override, sorted by name."""
        return [self._records[name] for name in sorted(self._records)]

    async def put(self, record: OverrideRecord) -> None:
        """Insert or replace the override of ``record.name``."""
        self._records[record.name] = record

    async def delete(self, name: str) -> bool:
        """Remove the override of *name*; ``True`` if there was one."""
        return self._records.pop(name, None) is not None

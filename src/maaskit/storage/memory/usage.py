"""In-process :class:`~maaskit.storage.ports.usage.UsageStore` (tests, demos, single process).

Records live in a dict keyed by ``request_id`` (the first write of a request id wins); reports
aggregate in Python with the same semantics as the SQL store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from maaskit.services.usage import UsageQuery, UsageRecord, UsageRow, sort_usage_rows

__all__ = ["MemoryUsageStore"]

_Group = tuple[str | date | None, ...]


def _dimension(record: UsageRecord, dim: str) -> str | date | None:
    if dim == "key":
        return record.key_id
    if dim == "owner":
        return record.owner_id
    if dim == "team":
        return record.team_id
    if dim == "model":
        return record.model
    if dim == "upstream":
        return record.upstream
    return record.created_at.date()  # "day": created_at is UTC


def _matches(record: UsageRecord, query: UsageQuery) -> bool:
    return (
        query.start <= record.created_at < query.end
        and (query.key_id is None or record.key_id == query.key_id)
        and (query.owner_id is None or record.owner_id == query.owner_id)
        and (query.team_id is None or record.team_id == query.team_id)
        and (query.model is None or record.model == query.model)
    )


class MemoryUsageStore:
    """Usage records in a dict, idempotent by ``request_id``."""

    def __init__(self) -> None:
        self._records: dict[str, UsageRecord] = {}

    def __repr__(self) -> str:
        return f"MemoryUsageStore(records={len(self._records)})"

    def __len__(self) -> int:
        return len(self._records)

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        """Store *records*, keeping the first record of every ``request_id``."""
        store = self._records
        for record in records:
            if record.request_id not in store:
                store[record.request_id] = record

    async def get(self, request_id: str) -> UsageRecord | None:
        """The stored record with *request_id*, or ``None``."""
        return self._records.get(request_id)

    async def aggregate(self, query: UsageQuery) -> list[UsageRow]:
        """Aggregate matching records by ``query.group_by`` (see the port for the contract)."""
        groups: dict[_Group, list[int]] = {}
        for record in self._records.values():
            if not _matches(record, query):
                continue
            group = tuple(_dimension(record, dim) for dim in query.group_by)
            sums = groups.setdefault(group, [0, 0, 0, 0, 0, 0])
            sums[0] += 1
            sums[1] += record.status != "ok"
            sums[2] += record.prompt_tokens
            sums[3] += record.completion_tokens
            sums[4] += record.total_tokens
            sums[5] += record.cost_micros
        if not query.group_by and not groups:
            groups[()] = [0, 0, 0, 0, 0, 0]
        rows = []
        for group, sums in groups.items():
            values = dict(zip(query.group_by, group, strict=True))
            rows.append(
                UsageRow(
                    key_id=values.get("key"),  # type: ignore[arg-type]
                    owner_id=values.get("owner"),  # type: ignore[arg-type]
                    team_id=values.get("team"),  # type: ignore[arg-type]
                    model=values.get("model"),  # type: ignore[arg-type]
                    upstream=values.get("upstream"),  # type: ignore[arg-type]
                    day=values.get("day"),  # type: ignore[arg-type]
                    requests=sums[0],
                    errors=sums[1],
                    prompt_tokens=sums[2],
                    completion_tokens=sums[3],
                    total_tokens=sums[4],
                    cost_micros=sums[5],
                )
            )
        return sort_usage_rows(rows, query.group_by)

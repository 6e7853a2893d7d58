"""UsageRecord validation, the usage error catalogs, and report invariants (hypothesis)."""

from __future__ import annotations

import asyncio
import json
import string
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maaskit.errors import ValidationError
from maaskit.money import MAX_MICROS
from maaskit.services.usage import UsageQuery, UsageRecord
from maaskit.storage.memory.usage import MemoryUsageStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.usage import SqlUsageStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fields(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": "req_1",
        "key_id": "k1",
        "owner_id": "u1",
        "model": "gpt-4o",
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "cost_micros": 4,
        "created_at": T0,
    }
    base.update(kw)
    return base


def test_defaults_and_cost() -> None:
    record = UsageRecord(**fields(cost_micros=1_250_000))
    assert record.cost == Decimal("1.25")
    assert (record.team_id, record.upstream, record.usage_source, record.status) == (
        None,
        None,
        "reported",
        "ok",
    )
    assert (record.streamed, record.latency_ms) == (False, 0)


def test_created_at_is_normalised_to_utc() -> None:
    local = datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    record = UsageRecord(**fields(created_at=local))
    assert record.created_at == T0
    assert record.created_at.tzinfo is UTC


def test_record_is_frozen() -> None:
    record = UsageRecord(**fields())
    with pytest.raises(AttributeError):
        record.cost_micros = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_id", ""),
        ("request_id", "x" * 129),
        ("request_id", "a\x00b"),
        ("request_id", "line\nbreak"),
        ("request_id", 12),
        ("key_id", None),
        ("owner_id", b"u1"),
        ("team_id", ""),
        ("model", "m" * 257),
        ("upstream", 3),
        ("prompt_tokens", -1),
        ("prompt_tokens", 1.0),
        ("completion_tokens", True),
        ("total_tokens", "3"),
        ("total_tokens", 2**63),
        ("cost_micros", -1),
        ("cost_micros", 0.5),
        ("cost_micros", Decimal("1")),
        ("cost_micros", MAX_MICROS + 1),
        ("latency_ms", -5),
        ("latency_ms", 2**31),
        ("usage_source", "guessed"),
        ("status", "OK"),
        ("streamed", 1),
        ("created_at", datetime(2026, 1, 1)),
        ("created_at", date(2026, 1, 1)),
        ("created_at", "2026-01-01T00:00:00Z"),
    ],
)
def test_bad_fields_are_refused_with_the_field_named(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        UsageRecord(**fields(**{field: value}))
    assert err.value.code == "usage.invalid"
    assert err.value.params["field"] == field
    assert field in str(err.value)


def test_boundaries_are_accepted() -> None:
    record = UsageRecord(
        **fields(
            request_id="r" * 128,
            model="m" * 256,
            prompt_tokens=0,
            completion_tokens=0,
            total_tokens=2**63 - 1,
            cost_micros=MAX_MICROS,
            latency_ms=2**31 - 1,
            key_id="clé-ü",
        )
    )
    assert record.cost_micros == MAX_MICROS
    assert record.key_id == "clé-ü"


def test_usage_codes_exist_in_every_locale_with_the_same_placeholders() -> None:
    root = resources.files("maaskit") / "locales"
    catalogs = {
        lang: json.loads((root / lang / "usage.json").read_text(encoding="utf-8")) for lang in ("en", "de")
    }
    assert set(catalogs["en"]) == set(catalogs["de"])
    assert {"usage.invalid", "usage.closed", "usage.buffer_full", "usage.unflushed"} <= set(catalogs["en"])
    formatter = string.Formatter()
    for code, message in catalogs["en"].items():
        en = {name for _, name, _, _ in formatter.parse(message) if name}
        de = {name for _, name, _, _ in formatter.parse(catalogs["de"][code]) if name}
        assert en == de, code
    err = ValidationError("usage.invalid", field="model", reason="must be a string")
    assert "model" in err.render("de")
    assert err.render("de") != str(err)


# -- invariants --------------------------------------------------------------------------------

ids = st.sampled_from(["a", "b", "c"])
records = st.builds(
    lambda rid, key, team, model, p, c, cost, minutes, status: UsageRecord(
        **fields(
            request_id=rid,
            key_id=key,
            team_id=team,
            model=model,
            prompt_tokens=p,
            completion_tokens=c,
            total_tokens=p + c,
            cost_micros=cost,
            created_at=T0 + timedelta(minutes=minutes),
            status=status,
        )
    ),
    st.text(alphabet="0123456789abcdef", min_size=1, max_size=4),
    ids,
    st.none() | ids,
    ids,
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10**12),
    st.integers(-2 * 1440, 3 * 1440 - 1),
    st.sampled_from(["ok", "error", "cancelled"]),
)
groupings = st.lists(st.sampled_from(["key", "owner", "team", "model", "upstream", "day"]), unique=True)


def first_per_id(batch: list[UsageRecord]) -> dict[str, UsageRecord]:
    seen: dict[str, UsageRecord] = {}
    for record in batch:
        seen.setdefault(record.request_id, record)
    return seen


@settings(max_examples=150, deadline=None)
@given(st.lists(records, max_size=40), groupings)
def test_memory_report_groups_partition_the_totals(batch: list[UsageRecord], group_by: list[str]) -> None:
    async def run() -> None:
        store = MemoryUsageStore()
        await store.add_many(batch)
        await store.add_many(batch)  # replaying the same batch changes nothing
        query = UsageQuery(start=T0 - timedelta(days=2), end=T0 + timedelta(days=3), group_by=tuple(group_by))
        rows = await store.aggregate(query)
        unique = first_per_id(batch).values()
        assert sum(r.requests for r in rows) == len(unique)
        assert sum(r.cost_micros for r in rows) == sum(r.cost_micros for r in unique)
        assert sum(r.errors for r in rows) == sum(r.status != "ok" for r in unique)
        assert sum(r.total_tokens for r in rows) == sum(r.total_tokens for r in unique)
        groups = [tuple(r.dimension(d) for d in query.group_by) for r in rows]  # type: ignore[arg-type]
        assert len(groups) == len(set(groups))

    asyncio.run(run())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, max_size=30), groupings, st.integers(-3 * 1440, 2 * 1440), st.integers(1, 3 * 1440))
def test_sqlite_reports_equal_memory_reports(
    batch: list[UsageRecord], group_by: list[str], start_min: int, span_min: int
) -> None:
    async def run() -> None:
        db = Database("sqlite+aiosqlite:///:memory:")
        try:
            await db.migrate()
            sql, memory = SqlUsageStore(db), MemoryUsageStore()
            half = len(batch) // 2
            for store in (sql, memory):
                await store.add_many(batch[:half])
                await store.add_many(batch[half:])
            start = T0 + timedelta(minutes=start_min)
            query = UsageQuery(start=start, end=start + timedelta(minutes=span_min), group_by=tuple(group_by))
            assert await sql.aggregate(query) == await memory.aggregate(query)
        finally:
            await db.aclose()

    asyncio.run(run())

"""One contract for every UsageStore: memory, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from maaskit.services.usage import UsageQuery, UsageRecord, UsageRow
from maaskit.storage.memory.usage import MemoryUsageStore
from maaskit.storage.ports.usage import UsageStore
from maaskit.storage.sql import Database, metadata
from maaskit.storage.sql.base import UTCDateTime
from maaskit.storage.sql.database import VERSION_TABLE
from maaskit.storage.sql.usage import SqlUsageStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def rec(request_id: str, **kw: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "key_id": "k1",
        "owner_id": "u1",
        "model": "gpt-4o",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost_micros": 100,
        "created_at": T0,
    }
    fields.update(kw)
    return UsageRecord(**fields)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> UsageStore:
    if request.param == "memory":
        return MemoryUsageStore()
    fixture = "sqlite_db" if request.param == "sqlite" else "postgres_db"
    return SqlUsageStore(request.getfixturevalue(fixture))


def q(**kw: Any) -> UsageQuery:
    kw.setdefault("start", T0 - timedelta(days=30))
    kw.setdefault("end", T0 + timedelta(days=30))
    return UsageQuery(**kw)


async def test_is_a_usage_store(store: UsageStore) -> None:
    assert isinstance(store, UsageStore)


async def test_round_trip_keeps_every_field(store: UsageStore) -> None:
    original = rec(
        "r1",
        team_id="t1",
        upstream="openai-eu",
        usage_source="estimated",
        status="cancelled",
        streamed=True,
        latency_ms=1234,
        cost_micros=2**40,
        prompt_tokens=2**33,
        created_at=datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC),
    )
    await store.add_many([original, rec("r2")])
    assert await store.get("r1") == original
    assert await store.get("missing") is None
    got = await store.get("r2")
    assert got is not None
    assert got.team_id is None
    assert got.upstream is None
    assert got.created_at.tzinfo is not None


async def test_empty_batch_is_a_no_op(store: UsageStore) -> None:
    await store.add_many([])
    assert (await store.aggregate(q(group_by=())))[0].requests == 0


async def test_duplicate_request_ids_are_stored_once_first_wins(store: UsageStore) -> None:
    await store.add_many([rec("r1", cost_micros=1), rec("r1", cost_micros=2), rec("r2")])
    await store.add_many([rec("r1", cost_micros=3), rec("r3")])
    await store.add_many([rec("r1", cost_micros=4)])
    first = await store.get("r1")
    assert first is not None
    assert first.cost_micros == 1
    [total] = await store.aggregate(q(group_by=()))
    assert total.requests == 3
    assert total.cost_micros == 1 + 100 + 100


@pytest.mark.parametrize("size", [1, 3, 255, 256, 257, 700])
async def test_batches_of_any_size_store_each_request_once(store: UsageStore, size: int) -> None:
    # SQLite writes 256-row statements and pads the rest with copies of its last row: none of
    # that may show (sizes around the chunk; an in-batch duplicate straddling its boundary)
    batch = [rec(f"r{i}", cost_micros=i + 1) for i in range(size)]
    if size > 256:
        batch[256] = rec("r255", cost_micros=999_999)
    await store.add_many(batch)
    await store.add_many(batch[:2])  # again: all known
    first: dict[str, UsageRecord] = {}
    for r in batch:
        first.setdefault(r.request_id, r)
    [total] = await store.aggregate(q(group_by=()))
    assert total.requests == len(first)
    assert total.cost_micros == sum(r.cost_micros for r in first.values())
    for i in {0, size // 2, size - 1, min(size - 1, 255), min(size - 1, 256)}:
        assert await store.get(batch[i].request_id) == first[batch[i].request_id]


@pytest.mark.parametrize("failing", [100, 600])
async def test_sqlite_batch_failing_in_any_statement_stores_nothing(
    sqlite_db: Database, failing: int
) -> None:
    # 700 rows are two 256-row chunks plus a padded rest: a failure in the first statement or
    # in the last one rolls the whole batch back, and the store stays usable
    store = SqlUsageStore(sqlite_db)
    async with sqlite_db.engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON maaskit_usage WHEN NEW.request_id = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    batch = [rec(f"r{i}") for i in range(700)]
    batch[failing] = rec("boom")
    with pytest.raises(Exception, match="refused"):
        await store.add_many(batch)
    assert (await store.aggregate(q(group_by=())))[0].requests == 0
    async with sqlite_db.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TRIGGER refuse_boom")
    await store.add_many(batch)
    assert (await store.aggregate(q(group_by=())))[0].requests == 700


async def test_totals_with_no_rows_are_zero(store: UsageStore) -> None:
    assert await store.aggregate(q(group_by=())) == [UsageRow()]
    assert await store.aggregate(q()) == []


async def test_report_by_key_model_day_across_utc_midnight(store: UsageStore) -> None:
    late = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    midnight = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    # 01:30 at UTC+02:00 is 23:30 UTC the day before: the bucket follows UTC.
    plus_two = datetime(2026, 3, 2, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    # 20:00 at UTC-05:00 is 01:00 UTC the next day.
    minus_five = datetime(2026, 3, 1, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
    await store.add_many(
        [
            rec("a", created_at=late, cost_micros=1, total_tokens=1),
            rec("b", created_at=plus_two, cost_micros=2, total_tokens=2),
            rec("c", created_at=midnight, cost_micros=4, total_tokens=4),
            rec("d", created_at=minus_five, cost_micros=8, total_tokens=8, status="error"),
            rec("e", created_at=late, model="llama", cost_micros=16, total_tokens=16),
            rec("f", created_at=late, key_id="k2", cost_micros=32, total_tokens=32),
        ]
    )
    rows = await store.aggregate(q())
    summary = [(r.key_id, r.model, r.day, r.requests, r.errors, r.cost_micros, r.total_tokens) for r in rows]
    assert summary == [
        ("k1", "gpt-4o", date(2026, 3, 1), 2, 0, 3, 3),
        ("k1", "gpt-4o", date(2026, 3, 2), 2, 1, 12, 12),
        ("k1", "llama", date(2026, 3, 1), 1, 0, 16, 16),
        ("k2", "gpt-4o", date(2026, 3, 1), 1, 0, 32, 32),
    ]
    assert all(r.owner_id is None and r.team_id is None and r.upstream is None for r in rows)
    by_day = await store.aggregate(q(group_by=("day",)))
    assert [(r.day, r.requests, r.cost_micros) for r in by_day] == [
        (date(2026, 3, 1), 4, 1 + 2 + 16 + 32),
        (date(2026, 3, 2), 2, 4 + 8),
    ]
    assert all(r.key_id is None and r.model is None for r in by_day)


async def test_range_is_start_inclusive_end_exclusive(store: UsageStore) -> None:
    await store.add_many(
        [
            rec("before", created_at=T0 - timedelta(microseconds=1)),
            rec("at_start", created_at=T0),
            rec("inside", created_at=T0 + timedelta(minutes=30)),
            rec("at_end", created_at=T0 + timedelta(hours=1)),
        ]
    )
    [total] = await store.aggregate(UsageQuery(start=T0, end=T0 + timedelta(hours=1), group_by=()))
    assert total.requests == 2
    # The same instant written in another zone selects the same rows.
    cet = timezone(timedelta(hours=1))
    [same] = await store.aggregate(
        UsageQuery(start=T0.astimezone(cet), end=(T0 + timedelta(hours=1)).astimezone(cet), group_by=())
    )
    assert same == total


async def test_filters(store: UsageStore) -> None:
    await store.add_many(
        [
            rec("1", key_id="k1", owner_id="u1", team_id="t1", model="m1", prompt_tokens=1),
            rec("2", key_id="k2", owner_id="u1", team_id="t1", model="m2", prompt_tokens=2),
            rec("3", key_id="k3", owner_id="u2", team_id=None, model="m1", prompt_tokens=4),
            rec("4", key_id="k3", owner_id="u2", team_id="t2", model="m1", prompt_tokens=8),
        ]
    )

    async def prompt(**kw: Any) -> int:
        [row] = await store.aggregate(q(group_by=(), **kw))
        return row.prompt_tokens

    assert await prompt() == 15
    assert await prompt(key_id="k3") == 12
    assert await prompt(owner_id="u1") == 3
    assert await prompt(team_id="t1") == 3
    assert await prompt(model="m1") == 13
    assert await prompt(model="m1", owner_id="u2", team_id="t2") == 8
    assert await prompt(key_id="nobody") == 0


async def test_group_by_team_owner_upstream_puts_none_last(store: UsageStore) -> None:
    await store.add_many(
        [
            rec("1", team_id=None, upstream="b"),
            rec("2", team_id="t2", upstream=None),
            rec("3", team_id="t1", upstream="a", owner_id="u2"),
            rec("4", team_id="t1", upstream="a"),
        ]
    )
    rows = await store.aggregate(q(group_by=("team", "owner", "upstream")))
    assert [(r.team_id, r.owner_id, r.upstream, r.requests) for r in rows] == [
        ("t1", "u1", "a", 1),
        ("t1", "u2", "a", 1),
        ("t2", "u1", None, 1),
        (None, "u1", "b", 1),
    ]


async def test_group_order_follows_group_by(store: UsageStore) -> None:
    await store.add_many(
        [
            rec("1", key_id="k2", model="a"),
            rec("2", key_id="k1", model="b"),
        ]
    )
    rows = await store.aggregate(q(group_by=("model", "key")))
    assert [(r.model, r.key_id) for r in rows] == [("a", "k2"), ("b", "k1")]


# -- the SQL schema ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def sql_database(request: pytest.FixtureRequest) -> Database:
    fixture = "sqlite_db" if request.param == "sqlite" else "postgres_db"
    db: Database = request.getfixturevalue(fixture)
    return db


async def test_migration_matches_the_table_definition(sql_database: Database) -> None:
    def diff(conn: sa.Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        return [d for d in compare_metadata(ctx, metadata) if "maaskit_usage" in repr(d)]

    async with sql_database.engine.connect() as conn:
        assert await conn.run_sync(diff) == []

    def inspect(conn: sa.Connection) -> tuple[list[str], dict[str, Any], list[str]]:
        insp = sa.inspect(conn)
        indexes = sorted(ix["name"] or "" for ix in insp.get_indexes("maaskit_usage"))
        return insp.get_table_names(), insp.get_pk_constraint("maaskit_usage"), indexes

    async with sql_database.engine.connect() as conn:
        tables, pk, indexes = await conn.run_sync(inspect)
    assert "maaskit_usage" in tables
    assert pk["constrained_columns"] == ["request_id"]
    assert indexes == [
        "ix_maaskit_usage_key_id_created_at",
        "ix_maaskit_usage_model_created_at",
        "ix_maaskit_usage_team_id_created_at",
    ]


async def test_migration_downgrades_and_upgrades_again(sql_database: Database) -> None:
    async def tables() -> list[str]:
        async with sql_database.engine.connect() as conn:
            return await conn.run_sync(lambda c: sa.inspect(c).get_table_names())

    assert await sql_database.current_revisions() == Database.head_revisions()
    await sql_database.downgrade("0001_foundation")
    assert "maaskit_usage" not in await tables()
    assert "maaskit_setting_overrides" in await tables()
    await sql_database.migrate()
    assert "maaskit_usage" in await tables()
    store = SqlUsageStore(sql_database)
    await store.add_many([rec("after-remigrate")])
    assert await store.get("after-remigrate") is not None


async def test_sqlite_fast_path_stores_the_text_sqlalchemy_binds(sqlite_db: Database) -> None:
    # The SQLite store binds plain tuples; the stored timestamp must equal what a Core query binds.
    store = SqlUsageStore(sqlite_db)
    stamps = [T0, T0 + timedelta(microseconds=7), datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)]
    await store.add_many([rec(f"t{i}", created_at=s) for i, s in enumerate(stamps)])
    table = sa.table("maaskit_usage", sa.column("request_id"), sa.column("created_at", UTCDateTime()))
    async with sqlite_db.engine.connect() as conn:
        for i, stamp in enumerate(stamps):
            found = await conn.scalar(sa.select(table.c.request_id).where(table.c.created_at == stamp))
            assert found == f"t{i}"
            assert (
                await conn.scalar(sa.select(table.c.created_at).where(table.c.request_id == f"t{i}")) == stamp
            )

"""The SQLite usage fast path stores exactly the timestamp text SQLAlchemy binds, for any instant.

``SqlUsageStore`` binds plain tuples on SQLite, many rows per statement (chunks of four here,
so full chunks and a padded rest both occur), and lets SQLite render ``created_at`` from whole
seconds since the epoch and the microsecond. Range queries, ``utc_day()`` and reads through the
ORM only agree if that text equals what SQLAlchemy's SQLite ``DateTime`` stores for the same
value: checked here over the whole ``datetime`` range, pre-1970 instants and zero microseconds
included, in any UTC offset.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from maaskit.services.usage import UsageRecord
from maaskit.storage.sql.tables.usage import UsageRecordRow
from maaskit.storage.sql.usage import _sqlite_chunks, _sqlite_insert, _sqlite_rest

_table: sa.Table = UsageRecordRow.__table__  # type: ignore[attr-defined]
_bind_text = sa.DateTime().dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())

instants = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
    ),
) | st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(1970, 1, 2), timezones=st.just(UTC))


@pytest.fixture(scope="module")
def engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://")
    _table.create(engine)
    yield engine
    engine.dispose()


@settings(max_examples=300, deadline=None)
@given(stamps=st.lists(instants, min_size=1, max_size=11))
def test_fast_path_text_equals_sqlalchemy_bind(engine: sa.Engine, stamps: list[datetime]) -> None:
    records = [
        UsageRecord(
            request_id=f"r{i}",
            key_id="k",
            owner_id="u",
            model="m",
            prompt_tokens=1,
            completion_tokens=2,
            total_tokens=3,
            cost_micros=4,
            created_at=stamp,
            streamed=bool(i % 2),
        )
        for i, stamp in enumerate(stamps)
    ]
    with engine.begin() as conn:
        conn.execute(_table.delete())
        full = len(records) - len(records) % 4  # the store's split, with chunks of four
        if full:
            conn.exec_driver_sql(_sqlite_insert(4), list(_sqlite_chunks(records[:full], 4)))
        if full < len(records):
            conn.exec_driver_sql(*_sqlite_rest(records[full:]))
        raw = dict(conn.exec_driver_sql("SELECT request_id, created_at FROM maaskit_usage").all())
        back = {row.request_id: row for row in conn.execute(sa.select(_table))}
    assert _bind_text is not None
    for record in records:
        assert raw[record.request_id] == _bind_text(record.created_at.replace(tzinfo=None))
        stored = back[record.request_id]
        assert stored.created_at == record.created_at
        assert stored.streamed is record.streamed

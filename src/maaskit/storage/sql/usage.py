"""SQL :class:`~maaskit.storage.ports.usage.UsageStore` (SQLite and PostgreSQL).

A batch goes in as ``INSERT ... ON CONFLICT (request_id) DO NOTHING`` in one transaction, so a
request id already stored, by this or another replica, is skipped: on PostgreSQL one Core
statement executed with many parameter sets, on SQLite multi-row statements of up to 256 rows
bound as plain tuples (see ``SqlUsageStore._add_sqlite``). Reports aggregate in SQL
(``GROUP BY``), with the UTC calendar day computed by the database on both dialects.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from itertools import chain, repeat
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from maaskit.errors import UnavailableError
from maaskit.services.usage import UsageQuery, UsageRecord, UsageRow, sort_usage_rows
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.usage import UsageRecordRow

__all__ = ["SqlUsageStore", "utc_day"]

_table: sa.Table = UsageRecordRow.__table__  # type: ignore[attr-defined]
_c = _table.c

# sqlite3's own errors: the SQLite fast path talks to the driver directly
_UNAVAILABLE = (
    OSError,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
)


class utc_day(sa.sql.functions.FunctionElement[date]):
    """``utc_day(ts)``: the UTC calendar day of a ``UTCDateTime`` column, as a ``DATE``.

    SQLite stores maaskit timestamps as UTC text, so this is ``date(ts)``; PostgreSQL stores
    ``timestamptz``, so it is ``CAST((ts AT TIME ZONE 'UTC') AS DATE)`` whatever the session's
    time zone.
    """

    type = sa.Date()
    name = "utc_day"
    inherit_cache = True


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC') AS DATE)"


_DIMENSIONS: dict[str, sa.ColumnElement[Any]] = {
    "key": _c.key_id,
    "owner": _c.owner_id,
    "team": _c.team_id,
    "model": _c.model,
    "upstream": _c.upstream,
    "day": utc_day(_c.created_at),
}
_ROW_FIELD = {
    "key": "key_id",
    "owner": "owner_id",
    "team": "team_id",
    "model": "model",
    "upstream": "upstream",
}


def _to_params(record: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "key_id": record.key_id,
        "owner_id": record.owner_id,
        "team_id": record.team_id,
        "model": record.model,
        "upstream": record.upstream,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "cost_micros": record.cost_micros,
        "usage_source": record.usage_source,
        "status": record.status,
        "streamed": record.streamed,
        "latency_ms": record.latency_ms,
        "created_at": record.created_at,
    }


_COLUMNS = (
    "request_id",
    "key_id",
    "owner_id",
    "team_id",
    "model",
    "upstream",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_micros",
    "usage_source",
    "status",
    "streamed",
    "latency_ms",
    "created_at",
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_sqlite_head = operator.attrgetter(*_COLUMNS[:-1])

# The SQLite fast path. Every column is bound as is except ``created_at``, which SQLite renders
# from whole seconds since the epoch and the microsecond into the exact text SQLAlchemy's SQLite
# ``DateTime`` stores ("YYYY-MM-DD HH:MM:SS.ffffff"), so range queries and utc_day() agree; that
# runs off the event loop and costs a third of ``datetime.isoformat`` on an aware value.
#
# Rows go in as multi-row ``INSERT ... VALUES (...), (...), ...`` statements of up to
# _SQLITE_CHUNK_ROWS rows, not with one ``executemany`` step per row: Python's sqlite3 module
# releases and retakes the GIL around every step, and with one step per row the writer thread
# fought the event loop for the GIL at every row. Measured in the reference gateway at
# concurrency 10: the event loop spent ~21 us more per request, the writer thread 2.5x the
# CPU, and the gateway served 13 % fewer requests than with 256-row statements.
_SQLITE_ROW = f"({'?, ' * (len(_COLUMNS) - 1)}datetime(?, 'unixepoch') || printf('.%06d', ?))"
_SQLITE_CHUNK_ROWS = 256


@functools.cache
def _sqlite_insert(rows: int) -> str:
    """The ``INSERT`` of *rows* rows (a power of two, so at most nine distinct statements)."""
    # built from this module's constant identifiers only (hence the S608 waiver)
    return (
        f"INSERT INTO {_table.name} ({', '.join(_COLUMNS)}) "  # noqa: S608
        f"VALUES {', '.join([_SQLITE_ROW] * rows)} ON CONFLICT (request_id) DO NOTHING"
    )


@functools.cache
def _sqlite_chunk_rows() -> int:
    """Rows per statement: 256, or the largest power of two this SQLite's variable limit allows."""
    with closing(sqlite3.connect(":memory:")) as probe:
        limit = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    fits = max(1, limit // (len(_COLUMNS) + 1))
    return min(_SQLITE_CHUNK_ROWS, 1 << (fits.bit_length() - 1))


def _to_sqlite_row(record: UsageRecord) -> tuple[Any, ...]:
    # created_at is UTC (UsageRecord normalises it); floor division keeps pre-1970 exact.
    at = record.created_at
    # concatenation, not unpacking: 50 instead of 75 ns a row
    return _sqlite_head(record) + ((at - _EPOCH) // _SECOND, at.microsecond)  # noqa: RUF005


def _sqlite_chunks(records: Sequence[UsageRecord], chunk: int) -> Iterator[tuple[Any, ...]]:
    """The parameters of one *chunk*-row statement per *chunk* records (a multiple of it)."""
    for start in range(0, len(records), chunk):
        yield tuple(chain.from_iterable(map(_to_sqlite_row, records[start : start + chunk])))


def _sqlite_rest(records: Sequence[UsageRecord]) -> tuple[str, tuple[Any, ...]]:
    """Fewer records than a chunk as one statement, padded up to a power of two rows.

    The padding repeats the last row, which ``ON CONFLICT (request_id) DO NOTHING`` skips like
    any known request id; so at most nine distinct SQL texts exist, each prepared once per
    connection.
    """
    rows = [_to_sqlite_row(r) for r in records]
    size = 1 << (len(rows) - 1).bit_length()
    rows.extend(repeat(rows[-1], size - len(rows)))
    return _sqlite_insert(size), tuple(chain.from_iterable(rows))


class SqlUsageStore:
    """Usage records in the ``maaskit_usage`` table.

    Args:
        database: a migrated :class:`~maaskit.storage.sql.database.Database`
            (SQLite or PostgreSQL).
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        if database.dialect == "postgresql":
            insert: Any = postgresql.insert(_table)
        else:
            insert = sqlite.insert(_table)
        self._insert = insert.on_conflict_do_nothing(index_elements=[_c.request_id])
        # SQLite: rows are bound as plain tuples (one attrgetter call per row) instead of going
        # through SQLAlchemy's generic bind processing (~3x faster), many rows per statement;
        # see _add_sqlite.
        self._sqlite_chunk = _sqlite_chunk_rows() if database.dialect == "sqlite" else 0

    def __repr__(self) -> str:
        return f"SqlUsageStore({self._db!r})"

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        """Insert *records* in one transaction; skip known request ids.

        Raises:
            UnavailableError: ``database.unavailable`` when the database cannot be reached
                (nothing of the batch is stored).
        """
        if not records:
            return
        try:
            async with self._db.engine.begin() as conn:
                if self._sqlite_chunk:
                    await self._add_sqlite(conn, records)
                else:
                    await conn.execute(self._insert, [_to_params(r) for r in records])
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc

    async def _add_sqlite(self, conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
        # Whole chunks in one executemany on the driver (aiosqlite), which consumes the lazy
        # parameter generator in its own thread: one hop, and the event loop converts nothing
        # (a 5,000-row batch would otherwise hold it for ~3.5 ms). Then the rest, if any.
        chunk = self._sqlite_chunk
        full = len(records) - len(records) % chunk
        driver = (await conn.get_raw_connection()).driver_connection
        if driver is None:  # pragma: no cover - an invalidated connection
            raise UnavailableError("database.unavailable")
        if full:
            async with driver.executemany(_sqlite_insert(chunk), _sqlite_chunks(records[:full], chunk)):
                pass
        if full < len(records):
            async with driver.execute(*_sqlite_rest(records[full:])):
                pass

    async def get(self, request_id: str) -> UsageRecord | None:
        """The stored record with *request_id*, or ``None``."""
        stmt = sa.select(_table).where(_c.request_id == request_id)
        try:
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc
        return None if row is None else UsageRecord(**row)

    async def aggregate(self, query: UsageQuery) -> list[UsageRow]:
        """Aggregate in SQL (``GROUP BY`` the query's dimensions); see the port for the contract."""
        dims = [_DIMENSIONS[dim] for dim in query.group_by]
        zero = sa.literal(0, sa.BigInteger)
        stmt = sa.select(
            *(expr.label(f"g_{dim}") for dim, expr in zip(query.group_by, dims, strict=True)),
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(sa.case((_c.status != "ok", 1), else_=0)), zero).label("errors"),
            sa.func.coalesce(sa.func.sum(_c.prompt_tokens), zero).label("prompt_tokens"),
            sa.func.coalesce(sa.func.sum(_c.completion_tokens), zero).label("completion_tokens"),
            sa.func.coalesce(sa.func.sum(_c.total_tokens), zero).label("total_tokens"),
            sa.func.coalesce(sa.func.sum(_c.cost_micros), zero).label("cost_micros"),
        ).where(_c.created_at >= query.start, _c.created_at < query.end)
        for column, value in (
            (_c.key_id, query.key_id),
            (_c.owner_id, query.owner_id),
            (_c.team_id, query.team_id),
            (_c.model, query.model),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        if dims:
            stmt = stmt.group_by(*dims)
        try:
            async with self._db.engine.connect() as conn:
                result = (await conn.execute(stmt)).mappings().all()
        except _UNAVAILABLE as exc:
            raise UnavailableError("database.unavailable") from exc
        rows = []
        for row in result:
            fields: dict[str, Any] = {
                "requests": int(row["requests"]),
                "errors": int(row["errors"]),
                "prompt_tokens": int(row["prompt_tokens"]),
                "completion_tokens": int(row["completion_tokens"]),
                "total_tokens": int(row["total_tokens"]),
                "cost_micros": int(row["cost_micros"]),
            }
            for dim in query.group_by:
                fields[_ROW_FIELD.get(dim, dim)] = row[f"g_{dim}"]
            rows.append(UsageRow(**fields))
        return sort_usage_rows(rows, query.group_by)

"""DownloadStore contract: memory, SQLite and PostgreSQL behave the same; migration 0008 matches the table."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import maaskit.storage.sql.tables  # noqa: F401  (registers every table)
from maaskit.errors import ForbiddenError
from maaskit.services.hub import DefaultHubService
from maaskit.storage.memory.downloads import MemoryDownloadStore
from maaskit.storage.ports.downloads import DownloadRecord, DownloadStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.downloads import SqlDownloadStore
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_hub import FakeHub

TABLE = "maaskit_download_requests"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Resolve server fixtures synchronously (``postgres_url`` runs its own event loop)."""
    if request.param == "postgres":
        return ("postgres", str(request.getfixturevalue("postgres_url")))
    return (request.param, "sqlite+aiosqlite:///:memory:")


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[DownloadStore]:
    kind, url = backend
    if kind == "memory":
        yield MemoryDownloadStore()
        return
    db = Database(url)
    await db.migrate()
    try:
        yield SqlDownloadStore(db)
    finally:
        if kind == "postgres":
            await db.downgrade("base")
        await db.aclose()


def _record(clock: FakeClock, i: int, status: str = "pending", repo: str = "acme/a") -> DownloadRecord:
    now = clock.now() + timedelta(seconds=i)
    return DownloadRecord(
        f"dl_{i:03d}", repo, f"f{i}.gguf", "main", status, now, now, endpoint="http://127.0.0.1:1"
    )


async def test_insert_get_update_delete(store: DownloadStore, clock: FakeClock) -> None:
    assert isinstance(store, DownloadStore)
    rec = _record(clock, 1)
    await store.insert(rec)
    assert await store.get(rec.id) == rec
    assert await store.get("dl_missing") is None
    changed = attrs.evolve(
        rec,
        status="running",
        total_bytes=5_000_000_000,  # > 2**31: BigInteger
        downloaded_bytes=123,
        error_code=None,
        updated_at=rec.updated_at + timedelta(seconds=3),
        filename="ignored.gguf",  # immutable fields are not rewritten
    )
    assert await store.update(changed)
    got = await store.get(rec.id)
    assert got == attrs.evolve(changed, filename=rec.filename)
    assert not await store.update(attrs.evolve(rec, id="dl_missing"))
    assert await store.delete(rec.id)
    assert not await store.delete(rec.id)
    assert await store.get(rec.id) is None


async def test_list_filters_oldest_first(store: DownloadStore, clock: FakeClock) -> None:
    statuses = ["completed", "running", "pending", "failed", "pending"]
    for i, status in reversed(list(enumerate(statuses))):
        await store.insert(_record(clock, i, status, repo="acme/b" if i == 4 else "acme/a"))
    assert [r.id for r in await store.list()] == [f"dl_{i:03d}" for i in range(5)]
    active = await store.list(statuses=("pending", "running"))
    assert [r.id for r in active] == ["dl_001", "dl_002", "dl_004"]
    assert [r.id for r in await store.list(repo_id="acme/b")] == ["dl_004"]
    assert len(await store.list(limit=2)) == 2


async def test_hub_tracks_progress_in_sql(sql_db: Database, clock: FakeClock, tmp_path: Path) -> None:
    store = SqlDownloadStore(sql_db)
    data = b"GGUF" + os.urandom(5000)
    async with FakeHub() as fake:
        fake.add_file("acme/gated", "m.gguf", data, gated=True, token="hf_ok")
        hub = DefaultHubService(store, clock, cache_dir=tmp_path, endpoint=fake.endpoint)
        with pytest.raises(ForbiddenError):
            await hub.download("acme/gated", "m.gguf")
        clock.advance(1)
        result = await hub.download("acme/gated", "m.gguf", token="hf_ok")
    failed, done = await store.list()
    assert (failed.status, failed.error_code) == ("failed", "hub.gated")
    assert (done.id, done.status, done.total_bytes, done.downloaded_bytes) == (
        result.request_id,
        "completed",
        len(data),
        len(data),
    )


async def test_pending_request_survives_restart(sql_db: Database, clock: FakeClock, tmp_path: Path) -> None:
    data = os.urandom(2048)
    async with FakeHub() as fake:
        fake.add_file("acme/r", "m.gguf", data)
        now = clock.now()
        await SqlDownloadStore(sql_db).insert(
            DownloadRecord(
                "dl_left", "acme/r", "m.gguf", "main", "running", now, now, 10, 5, None, fake.endpoint
            )
        )
        # a new process: a new service over the same database
        hub = DefaultHubService(SqlDownloadStore(sql_db), clock, cache_dir=tmp_path)
        [final] = await hub.resume_pending()
    assert (final.id, final.status, final.downloaded_bytes) == ("dl_left", "completed", len(data))


async def test_migration_matches_table_and_downgrades(sql_db: Database) -> None:
    def diff(conn: sa.Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(ctx, metadata) if TABLE in repr(d)]

    async with sql_db.connect() as conn:
        assert await conn.run_sync(diff) == []
    await sql_db.downgrade("0008_downloads@0001_foundation")
    async with sql_db.connect() as conn:
        tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    assert TABLE not in tables
    assert "maaskit_setting_overrides" in tables
    await sql_db.migrate()
    assert await sql_db.current_revisions() == Database.head_revisions()

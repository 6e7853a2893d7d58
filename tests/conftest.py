"""Shared fixtures: real PostgreSQL and Redis when this machine has them.

Tests that need a server use the ``postgres_url`` / ``redis_url`` fixtures. Where the server is
absent they skip with the reason, unless ``MAASKIT_REQUIRE_SERVICES=1`` (CI), where they fail.
Each test session gets its own PostgreSQL database (dropped at the end) and every Redis test
gets its own key prefix, so parallel runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from maaskit.storage.sql import Database
from maaskit.testing.clock import FakeClock

PG_ADMIN_URL = os.environ.get(
    "MAASKIT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("MAASKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("MAASKIT_REQUIRE_SERVICES") == "1"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _missing(what: str, url: str) -> None:
    reason = f"{what} is not reachable at {url} (start it, or set MAASKIT_TEST_{what.upper()}_URL)"
    if REQUIRE_SERVICES:
        pytest.fail(f"MAASKIT_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session (dropped afterwards)."""
    if not _reachable(PG_ADMIN_URL, 5432):
        _missing("postgres", PG_ADMIN_URL)
    import asyncpg

    parts = urlsplit(PG_ADMIN_URL.replace("+asyncpg", ""))
    name = f"maaskit_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(parts._replace(scheme="postgresql").geturl())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def run(sql: str) -> None:
        # in a thread of its own: this fixture may be first requested from inside a running loop
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, admin(sql)).result()

    run(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server (tests must use :func:`redis_prefix` for their keys)."""
    if not _reachable(REDIS_URL, 6379):
        _missing("redis", REDIS_URL)
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to this test, e.g. ``t:3f2a...:``."""
    return f"t:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def clock() -> FakeClock:
    """A :class:`FakeClock` at 2026-01-01T00:00:00Z."""
    return FakeClock()


@pytest.fixture
async def sqlite_db() -> AsyncIterator[Database]:
    """A migrated in-memory SQLite database."""
    db = Database("sqlite+aiosqlite:///:memory:")
    await db.migrate()
    yield db
    await db.aclose()


@pytest.fixture
async def postgres_db(postgres_url: str) -> AsyncIterator[Database]:
    """A migrated PostgreSQL database (tables dropped after the test)."""
    db = Database(postgres_url)
    await db.migrate()
    yield db
    await db.downgrade("base")
    await db.aclose()


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_db(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    """The same test on migrated SQLite and PostgreSQL."""
    if request.param == "sqlite":
        db = Database("sqlite+aiosqlite:///:memory:")
    else:
        db = Database(request.getfixturevalue("postgres_url"))
    await db.migrate()
    yield db
    if request.param == "postgres":
        await db.downgrade("base")
    await db.aclose()


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """``(kind, url, redis key prefix)`` for a store contract run on every backend."""
    if request.param == "postgres":
        return ("postgres", request.getfixturevalue("postgres_url"), "")
    if request.param == "redis":
        return ("redis", request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
    return (request.param, "sqlite+aiosqlite:///:memory:", "")

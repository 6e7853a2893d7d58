"""A Redis client for tests that write under one key prefix (import it as ``redis_support``).

``tests/`` is on ``sys.path`` (pytest's rootdir conftest), so test modules import this directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


@asynccontextmanager
async def redis_client(url: str, prefix: str) -> AsyncIterator[Any]:
    """A client on a blocking pool of 50 connections (enough for hundreds of concurrent calls);
    at exit every key under *prefix* is deleted and the client and its pool are closed."""
    import redis.asyncio as redis_asyncio

    pool = redis_asyncio.BlockingConnectionPool.from_url(url, max_connections=50, timeout=30)
    client = redis_asyncio.Redis(connection_pool=pool)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await pool.disconnect()

"""A :class:`~maaskit.services.cache.CacheService` in Redis, shared by every replica.

Every key is stored under a prefix (default ``maaskit:cache:``) so the cache never touches
other data in the same Redis database. Expiry uses Redis' own millisecond TTLs (``PX``), and
:meth:`RedisCache.incr` is one ``MULTI``/``EXEC`` transaction (``SET NX PX`` + ``INCRBY``), so
counters are exact across replicas.

Example::

    from maaskit.storage.redis.client import create_redis
    from maaskit.storage.redis.cache import RedisCache

    cache = RedisCache(create_redis("redis://127.0.0.1:6379/0"), default_ttl=300, close_client=True)
    await cache.set("k", b"v", ttl=5)
    await cache.aclose()
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import redis.asyncio as redis_asyncio
import redis.exceptions as redis_errors

from maaskit.errors import ValidationError
from maaskit.services.cache import check_amount, check_key, check_ttl, check_value
from maaskit.storage.redis.client import translate_redis_errors

__all__ = ["RedisCache"]

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_SCAN_BATCH = 500


def _px(ttl: float | None) -> int | None:
    """Seconds to whole milliseconds, rounded up so a tiny TTL never becomes 0 (no expiry)."""
    return None if ttl is None else max(1, math.ceil(ttl * 1000))


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode("utf-8") if isinstance(value, str) else value


class RedisCache:
    """A :class:`~maaskit.services.cache.CacheService` over ``redis.asyncio``.

    Args:
        redis: a client with ``decode_responses=False`` (see
            :func:`maaskit.storage.redis.client.create_redis`).
        prefix: prepended to every key; ``clear_prefix("")`` removes exactly this namespace.
        default_ttl: seconds an entry lives when ``set`` gets no TTL (``None``: no expiry).
        close_client: close *redis* in :meth:`aclose` (leave ``False`` for a shared client).
    """

    def __init__(
        self,
        redis: redis_asyncio.Redis,
        prefix: str = "maaskit:cache:",
        default_ttl: float | None = 300.0,
        *,
        close_client: bool = False,
    ) -> None:
        kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ValidationError(
                "config.invalid",
                setting="MAASKIT_REDIS_URL",
                reason="RedisCache needs a Redis client with decode_responses=False",
            )
        if not isinstance(prefix, str):
            raise ValidationError("cache.invalid_key", reason="the key prefix must be a str")
        self._redis = redis
        self._prefix = prefix
        self._default_ttl = check_ttl(default_ttl)
        self._close_client = close_client

    def __repr__(self) -> str:
        return f"RedisCache(prefix={self._prefix!r}, default_ttl={self._default_ttl})"

    @property
    def prefix(self) -> str:
        """The namespace prepended to every key."""
        return self._prefix

    def _k(self, key: str) -> str:
        return self._prefix + check_key(key)

    async def get(self, key: str) -> bytes | None:
        """The value stored under *key*, or ``None`` when absent or expired."""
        name = self._k(key)
        with translate_redis_errors("cache.unavailable"):
            value = await self._redis.get(name)
        return _as_bytes(value)

    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of those *keys* that are present (absent keys are left out)."""
        wanted = list(dict.fromkeys(check_key(k) for k in keys))
        if not wanted:
            return {}
        with translate_redis_errors("cache.unavailable"):
            values = await self._redis.mget([self._prefix + k for k in wanted])
        found = {k: _as_bytes(v) for k, v in zip(wanted, values, strict=True)}
        return {k: v for k, v in found.items() if v is not None}

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store *value* under *key* for *ttl* seconds (``None``: the default TTL)."""
        name = self._k(key)
        data = check_value(value)
        px = _px(check_ttl(ttl, self._default_ttl))
        with translate_redis_errors("cache.unavailable"):
            await self._redis.set(name, data, px=px)

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        """Store every item with the same TTL in one ``MULTI``/``EXEC`` transaction."""
        checked = [(self._k(k), check_value(v)) for k, v in items.items()]
        px = _px(check_ttl(ttl, self._default_ttl))
        if not checked:
            return
        with translate_redis_errors("cache.unavailable"):
            async with self._redis.pipeline(transaction=True) as pipe:
                for name, data in checked:
                    pipe.set(name, data, px=px)
                await pipe.execute()

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store *value* only if *key* is absent (``SET NX``); ``True`` if it was stored."""
        name = self._k(key)
        data = check_value(value)
        px = _px(check_ttl(ttl, self._default_ttl))
        with translate_redis_errors("cache.unavailable"):
            stored = await self._redis.set(name, data, px=px, nx=True)
        return bool(stored)

    async def delete(self, key: str) -> bool:
        """Remove *key*; ``True`` if it was present."""
        name = self._k(key)
        with translate_redis_errors("cache.unavailable"):
            removed: int = await self._redis.delete(name)
        return removed > 0

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add *amount* to the integer under *key*; a new key gets *ttl*, an existing one keeps its expiry."""
        name = self._k(key)
        step = check_amount(amount)
        px = _px(check_ttl(ttl, self._default_ttl))
        try:
            with translate_redis_errors("cache.unavailable"):
                if px is None:
                    result: int = await self._redis.incrby(name, step)
                    return result
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(name, b"0", px=px, nx=True)
                    pipe.incrby(name, step)
                    _created, result = await pipe.execute()
                return int(result)
        except redis_errors.ResponseError as exc:
            text = str(exc).lower()
            if "not an integer" in text or "overflow" in text or "out of range" in text:
                raise ValidationError("cache.not_integer") from None
            raise

    async def clear_prefix(self, prefix: str) -> int:
        """Delete every key starting with *prefix* (``""``: the whole cache namespace); returns how many.

        Uses ``SCAN`` + ``UNLINK`` in batches: not atomic with concurrent writers, never blocking
        the server. Refused when both the cache's prefix and *prefix* are empty (that would
        empty the whole Redis database).
        """
        if not isinstance(prefix, str):
            raise ValidationError("cache.invalid_key", reason="a prefix must be a str")
        if not self._prefix and not prefix:
            raise ValidationError(
                "cache.invalid_key", reason="clearing everything needs a RedisCache with a key prefix"
            )
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self._prefix + prefix) + "*"
        removed = 0
        with translate_redis_errors("cache.unavailable"):
            batch: list[bytes] = []
            async for name in self._redis.scan_iter(match=pattern, count=_SCAN_BATCH):
                batch.append(name)
                if len(batch) >= _SCAN_BATCH:
                    removed += await self._redis.unlink(*batch)
                    batch.clear()
            if batch:
                removed += await self._redis.unlink(*batch)
        return removed

    async def ping(self) -> None:
        """``PING`` the server; raises ``UnavailableError("cache.unavailable")`` if it is down."""
        with translate_redis_errors("cache.unavailable"):
            await self._redis.ping()

    async def aclose(self) -> None:
        """Close the Redis client if this cache owns it (``close_client=True``)."""
        if self._close_client:
            await self._redis.aclose()

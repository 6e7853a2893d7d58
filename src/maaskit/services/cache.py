"""A small key-value cache with expiry: the ``CacheService`` protocol and its input rules.

Values are ``bytes``: callers serialise (or use :func:`get_json` / :func:`set_json`). Two
implementations ship with maaskit and pass the same contract suite
(:mod:`maaskit.testing.contracts.cache`):

* :class:`maaskit.storage.memory.cache.MemoryCache`: in-process, LRU-bounded, expiry through
  the injected :class:`~maaskit.clock.Clock` (``cachetools``);
* :class:`maaskit.storage.redis.cache.RedisCache`: shared by every replica (``redis-py``).

Example::

    from maaskit.storage.memory.cache import MemoryCache
    from maaskit.services.cache import get_json, set_json

    cache = MemoryCache(max_entries=10_000, default_ttl=300)
    await cache.set("models", b"[...]", ttl=60)
    await set_json(cache, "team:t1", {"budget": 5_000_000})
    assert await get_json(cache, "team:t1") == {"budget": 5_000_000}
    hits = await cache.incr("hits:2026-01-01", ttl=86_400)

Rules every implementation enforces (the same on every backend):

* keys are non-empty ``str`` of at most :data:`MAX_KEY_BYTES` UTF-8 bytes, else
  ``ValidationError("cache.invalid_key")``;
* a TTL is a positive, finite number of seconds, else ``ValidationError("cache.invalid_ttl")``;
  ``ttl=None`` means the cache's ``default_ttl`` (which may itself be ``None``: no expiry);
* values are ``bytes`` (``bytearray``/``memoryview`` are copied to ``bytes``), else
  ``ValidationError("cache.invalid_value")``;
* an unreachable backend raises ``UnavailableError("cache.unavailable")``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from maaskit.errors import ValidationError

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_KEY_BYTES",
    "CacheService",
    "check_amount",
    "check_key",
    "check_ttl",
    "check_value",
    "get_json",
    "set_json",
]

#: Longest key accepted, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Range of counters kept by :meth:`CacheService.incr` (Redis' signed 64-bit integers).
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@runtime_checkable
class CacheService(Protocol):
    """An async key-value cache with per-entry expiry. Values are bytes."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under *key*, or ``None`` when absent or expired."""
        ...

    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of those *keys* that are present (absent keys are left out)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store *value* under *key* for *ttl* seconds (``None``: the cache's default TTL)."""
        ...

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        """Store every item with the same TTL, all or nothing (one validation pass first)."""
        ...

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store *value* only if *key* is absent; ``True`` if it was stored (atomic)."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove *key*; ``True`` if it was present."""
        ...

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add *amount* to the integer under *key* and return the new value.

        An absent key starts at 0 and gets *ttl* (or the default TTL); an existing key keeps
        its expiry, so ``incr(key, ttl=60)`` counts within a fixed 60-second window. The value
        is stored as ASCII digits (``get`` returns ``b"3"``). Raises
        ``ValidationError("cache.not_integer")`` if the stored value is not an integer or the
        result leaves the signed 64-bit range.
        """
        ...

    async def clear_prefix(self, prefix: str) -> int:
        """Delete every key starting with *prefix* (``""``: everything); returns how many."""
        ...

    async def ping(self) -> None:
        """Check the backend; raises ``UnavailableError("cache.unavailable")`` if it is down."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources (a shared Redis client is not closed)."""
        ...


def check_key(key: object) -> str:
    """Return *key* if it is a valid cache key, else raise ``cache.invalid_key``."""
    if not isinstance(key, str):
        raise ValidationError("cache.invalid_key", reason=f"a key must be a str, not {type(key).__name__}")
    if not key:
        raise ValidationError("cache.invalid_key", reason="a key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("cache.invalid_key", reason="a key must be valid Unicode text") from None
    if size > MAX_KEY_BYTES:
        raise ValidationError("cache.invalid_key", reason=f"a key must be at most {MAX_KEY_BYTES} bytes")
    return key


def check_ttl(ttl: object, default: float | None = None) -> float | None:
    """The TTL to apply: *ttl*, or *default* when *ttl* is ``None``; raises ``cache.invalid_ttl``."""
    if ttl is None:
        return default
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ValidationError("cache.invalid_ttl", ttl=repr(ttl))
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValidationError("cache.invalid_ttl", ttl=repr(ttl))
    return float(ttl)


def check_value(value: object) -> bytes:
    """*value* as ``bytes``; raises ``cache.invalid_value`` for anything else (``str`` included)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise ValidationError(
        "cache.invalid_value", reason=f"values must be bytes, not {type(value).__name__}; serialise first"
    )


def check_amount(amount: object) -> int:
    """*amount* if it is an ``int`` (not ``bool``) in the 64-bit range; raises ``cache.invalid_amount``."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not INT64_MIN <= amount <= INT64_MAX:
        raise ValidationError("cache.invalid_amount", amount=repr(amount))
    return amount


async def get_json(cache: CacheService, key: str) -> Any:
    """The JSON document stored under *key* by :func:`set_json`, or ``None`` when absent.

    A value that is not valid JSON is treated as absent (a cache may hold anything), so the
    caller recomputes it.
    """
    raw = await cache.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def set_json(cache: CacheService, key: str, value: Any, ttl: float | None = None) -> None:
    """Store *value* as compact UTF-8 JSON under *key*.

    Raises ``ValidationError("cache.invalid_value")`` if *value* is not JSON-serialisable
    (NaN and infinities included).
    """
    try:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise ValidationError("cache.invalid_value", reason="nested too deeply to serialise") from None
    except (TypeError, ValueError) as exc:
        raise ValidationError("cache.invalid_value", reason=f"not JSON-serialisable: {exc}") from None
    await cache.set(key, data.encode("utf-8"), ttl)

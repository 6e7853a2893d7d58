"""In-process :class:`~maaskit.services.cache.CacheService` backed by ``cachetools``.

Entries expire by the injected :class:`~maaskit.clock.Clock`'s monotonic time (so tests move
time with :class:`~maaskit.testing.clock.FakeClock`), and the least recently used entry is
evicted when ``max_entries`` is reached. One process only: replicas each have their own copy;
use :class:`maaskit.storage.redis.cache.RedisCache` to share.

Example::

    cache = MemoryCache(max_entries=10_000, default_ttl=300)
    await cache.set("k", b"v", ttl=5)
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from cachetools import TLRUCache

from maaskit.clock import Clock, SystemClock
from maaskit.errors import ValidationError
from maaskit.services.cache import (
    INT64_MAX,
    INT64_MIN,
    check_amount,
    check_key,
    check_ttl,
    check_value,
)

__all__ = ["MemoryCache"]

#: What Redis accepts as an integer string (no sign '+', no spaces, no leading zeros).
_REDIS_INT = re.compile(rb"(?:0|-?[1-9][0-9]*)\Z")


class _Entry(NamedTuple):
    value: bytes
    expires: float  # monotonic deadline; math.inf for no expiry


def _time_to_use(_key: str, entry: _Entry, _now: float) -> float:
    return entry.expires


class MemoryCache:
    """A :class:`~maaskit.services.cache.CacheService` in this process's memory.

    Args:
        max_entries: the most entries kept; the least recently used one is evicted beyond it.
        default_ttl: seconds an entry lives when ``set`` gets no TTL (``None``: until evicted).
        clock: the time source for expiry (its ``monotonic()``).
    """

    def __init__(
        self,
        max_entries: int = 100_000,
        default_ttl: float | None = 300.0,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValidationError(
                "config.invalid", setting="MAASKIT_CACHE_MAX_ENTRIES", reason="max_entries must be >= 1"
            )
        self._default_ttl = check_ttl(default_ttl)
        self._clock = clock or SystemClock()
        self._data: TLRUCache[str, _Entry] = TLRUCache(
            maxsize=max_entries, ttu=_time_to_use, timer=self._clock.monotonic
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryCache(max_entries={self._data.maxsize}, default_ttl={self._default_ttl})"

    def _deadline(self, ttl: float | None) -> float:
        return math.inf if ttl is None else self._clock.monotonic() + ttl

    async def get(self, key: str) -> bytes | None:
        """The value stored under *key*, or ``None`` when absent or expired."""
        check_key(key)
        with self._lock:
            entry = self._data.get(key)
        return None if entry is None else entry.value

    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of those *keys* that are present (absent keys are left out)."""
        wanted = [check_key(k) for k in keys]
        found: dict[str, bytes] = {}
        with self._lock:
            for key in wanted:
                entry = self._data.get(key)
                if entry is not None:
                    found[key] = entry.value
        return found

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store *value* under *key* for *ttl* seconds (``None``: the default TTL)."""
        check_key(key)
        data = check_value(value)
        seconds = check_ttl(ttl, self._default_ttl)
        with self._lock:
            self._data[key] = _Entry(data, self._deadline(seconds))

    async def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        """Store every item with the same TTL; nothing is stored if any key or value is invalid."""
        checked = [(check_key(k), check_value(v)) for k, v in items.items()]
        seconds = check_ttl(ttl, self._default_ttl)
        with self._lock:
            deadline = self._deadline(seconds)
            for key, data in checked:
                self._data[key] = _Entry(data, deadline)

    async def add(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store *value* only if *key* is absent (or expired); ``True`` if it was stored."""
        check_key(key)
        data = check_value(value)
        seconds = check_ttl(ttl, self._default_ttl)
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = _Entry(data, self._deadline(seconds))
            return True

    async def delete(self, key: str) -> bool:
        """Remove *key*; ``True`` if it was present (and not expired)."""
        check_key(key)
        with self._lock:
            present = key in self._data
            self._data.pop(key, None)
            return present

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add *amount* to the integer under *key*; a new key gets *ttl*, an existing one keeps its expiry."""
        check_key(key)
        step = check_amount(amount)
        seconds = check_ttl(ttl, self._default_ttl)
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                current, deadline = 0, self._deadline(seconds)
            else:
                if not _REDIS_INT.match(entry.value):
                    raise ValidationError("cache.not_integer")
                current, deadline = int(entry.value), entry.expires
            result = current + step
            if not INT64_MIN <= result <= INT64_MAX:
                raise ValidationError("cache.not_integer")
            self._data[key] = _Entry(str(result).encode("ascii"), deadline)
            return result

    async def clear_prefix(self, prefix: str) -> int:
        """Delete every key starting with *prefix* (``""``: everything); returns how many."""
        if not isinstance(prefix, str):
            raise ValidationError("cache.invalid_key", reason="a prefix must be a str")
        with self._lock:
            self._data.expire()
            doomed = [k for k in list(self._data) if k.startswith(prefix)]
            for key in doomed:
                self._data.pop(key, None)
            return len(doomed)

    async def ping(self) -> None:
        """Always succeeds: memory is always there."""

    async def aclose(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()

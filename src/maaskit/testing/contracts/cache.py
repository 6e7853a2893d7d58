"""The contract every :class:`~maaskit.services.cache.CacheService` must pass.

maaskit runs this suite on :class:`~maaskit.storage.memory.cache.MemoryCache` and
:class:`~maaskit.storage.redis.cache.RedisCache`; run it on your own implementation by
subclassing :class:`CacheContract` in a test module and providing a ``cache`` fixture (a fresh,
empty cache per test, with ``default_ttl=None``). To run the expiry tests too, override the
``advance`` fixture with an async callable that moves your backend's time forward by a number
of seconds (for a cache on a :class:`~maaskit.testing.clock.FakeClock`: ``clock.advance``).

Example::

    import pytest
    from maaskit.testing.clock import FakeClock
    from maaskit.testing.contracts.cache import CacheContract

    class TestMyCache(CacheContract):
        @pytest.fixture
        def clock(self) -> FakeClock:
            return FakeClock()

        @pytest.fixture
        async def cache(self, clock):
            return MyCache(default_ttl=None, clock=clock)

        @pytest.fixture
        def advance(self, clock):
            async def advance(seconds: float) -> None:
                clock.advance(seconds)
            return advance

The suite needs ``pytest``, ``pytest-asyncio`` and ``hypothesis``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maaskit.errors import MaasError, ValidationError
from maaskit.services.cache import INT64_MAX, MAX_KEY_BYTES, CacheService, get_json, set_json

__all__ = ["Advance", "CacheContract"]

#: Moves the backend's time forward by the given number of seconds.
Advance = Callable[[float], Awaitable[None]]

_BAD_TTLS: list[Any] = [0, 0.0, -1, -0.5, float("nan"), float("inf"), True, "5"]
_BAD_KEYS: list[Any] = [
    "",
    "é" * (MAX_KEY_BYTES // 2 + 1),
    "x" * (MAX_KEY_BYTES + 1),
    5,
    b"k",
    None,
    "\ud800",
]


def _code(exc: pytest.ExceptionInfo[MaasError]) -> str:
    return exc.value.code


class CacheContract:
    """Behaviour every cache implementation shares. Subclass it as ``Test<YourCache>``."""

    pytestmark = [pytest.mark.asyncio]

    @pytest.fixture
    def advance(self) -> Advance | None:
        """Override: an async callable moving the backend's time forward; ``None`` skips expiry tests."""
        return None

    @pytest.fixture
    def time_travel(self, advance: Advance | None) -> Advance:
        if advance is None:
            pytest.skip("this cache fixture offers no way to move time (override the 'advance' fixture)")
        return advance

    # -- basic get / set / delete ------------------------------------------------------------

    async def test_conforms_to_protocol(self, cache: CacheService) -> None:
        assert isinstance(cache, CacheService)

    async def test_get_missing_is_none(self, cache: CacheService) -> None:
        assert await cache.get("absent") is None

    async def test_set_then_get_round_trips_bytes(self, cache: CacheService) -> None:
        await cache.set("k", b"\x00\xffvalue")
        assert await cache.get("k") == b"\x00\xffvalue"
        await cache.set("k", b"")
        assert await cache.get("k") == b""

    async def test_set_overwrites(self, cache: CacheService) -> None:
        await cache.set("k", b"one")
        await cache.set("k", b"two")
        assert await cache.get("k") == b"two"

    async def test_bytes_like_values_come_back_as_bytes(self, cache: CacheService) -> None:
        await cache.set("a", bytearray(b"ba"))  # type: ignore[arg-type]
        await cache.set("m", memoryview(b"mv"))  # type: ignore[arg-type]
        a, m = await cache.get("a"), await cache.get("m")
        assert (a, m) == (b"ba", b"mv")
        assert type(a) is bytes
        assert type(m) is bytes

    @pytest.mark.parametrize("value", ["text", 5, None, {"a": 1}])
    async def test_non_bytes_value_is_refused_and_nothing_written(
        self, cache: CacheService, value: Any
    ) -> None:
        with pytest.raises(ValidationError) as exc:
            await cache.set("k", value)
        assert _code(exc) == "cache.invalid_value"
        assert await cache.get("k") is None

    async def test_unicode_keys_are_distinct(self, cache: CacheService) -> None:
        await cache.set("schlüssel", b"de")
        await cache.set("schlussel", b"plain")
        assert await cache.get("schlüssel") == b"de"
        assert await cache.get("schlussel") == b"plain"

    async def test_key_of_exactly_the_limit_is_accepted(self, cache: CacheService) -> None:
        key = "k" * MAX_KEY_BYTES
        await cache.set(key, b"v")
        assert await cache.get(key) == b"v"

    @pytest.mark.parametrize(
        "key", _BAD_KEYS, ids=["empty", "multibyte-1026", "ascii-1025", "int", "bytes", "none", "surrogate"]
    )
    async def test_invalid_keys_are_refused_everywhere(self, cache: CacheService, key: Any) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: cache.get(key),
            lambda: cache.set(key, b"v"),
            lambda: cache.add(key, b"v"),
            lambda: cache.delete(key),
            lambda: cache.incr(key),
            lambda: cache.get_many(["ok", key]),
            lambda: cache.set_many({"ok": b"v", key: b"v"}),
        ]
        for call in calls:
            with pytest.raises(ValidationError) as exc:
                await call()
            assert _code(exc) == "cache.invalid_key"
        assert await cache.get("ok") is None

    @pytest.mark.parametrize("ttl", _BAD_TTLS, ids=["0", "0.0", "-1", "-0.5", "nan", "inf", "bool", "str"])
    async def test_invalid_ttls_are_refused_and_nothing_written(self, cache: CacheService, ttl: Any) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: cache.set("k", b"v", ttl=ttl),
            lambda: cache.add("k", b"v", ttl=ttl),
            lambda: cache.incr("k", ttl=ttl),
            lambda: cache.set_many({"k": b"v"}, ttl=ttl),
        ]
        for call in calls:
            with pytest.raises(ValidationError) as exc:
                await call()
            assert _code(exc) == "cache.invalid_ttl"
        assert await cache.get("k") is None

    async def test_delete_reports_presence(self, cache: CacheService) -> None:
        await cache.set("k", b"v")
        assert await cache.delete("k") is True
        assert await cache.get("k") is None
        assert await cache.delete("k") is False

    # -- many ----------------------------------------------------------------------------------

    async def test_get_many_returns_only_present_keys(self, cache: CacheService) -> None:
        await cache.set("a", b"1")
        await cache.set("b", b"2")
        assert await cache.get_many(["a", "b", "c", "a"]) == {"a": b"1", "b": b"2"}
        assert await cache.get_many([]) == {}

    async def test_set_many_stores_all(self, cache: CacheService) -> None:
        await cache.set_many({"a": b"1", "b": b"2"})
        assert await cache.get_many(["a", "b"]) == {"a": b"1", "b": b"2"}
        await cache.set_many({})

    async def test_set_many_with_one_bad_value_writes_nothing(self, cache: CacheService) -> None:
        with pytest.raises(ValidationError):
            await cache.set_many({"a": b"1", "b": "not bytes", "c": b"3"})  # type: ignore[dict-item]
        assert await cache.get_many(["a", "b", "c"]) == {}

    # -- add -----------------------------------------------------------------------------------

    async def test_add_only_when_absent(self, cache: CacheService) -> None:
        assert await cache.add("k", b"first") is True
        assert await cache.add("k", b"second") is False
        assert await cache.get("k") == b"first"
        await cache.delete("k")
        assert await cache.add("k", b"third") is True
        assert await cache.get("k") == b"third"

    async def test_concurrent_add_has_exactly_one_winner(self, cache: CacheService) -> None:
        results = await asyncio.gather(*(cache.add("lock", str(i).encode()) for i in range(20)))
        assert results.count(True) == 1
        winner = results.index(True)
        assert await cache.get("lock") == str(winner).encode()

    # -- incr ----------------------------------------------------------------------------------

    async def test_incr_starts_at_zero_and_counts(self, cache: CacheService) -> None:
        assert await cache.incr("n") == 1
        assert await cache.incr("n", 5) == 6
        assert await cache.incr("n", -10) == -4
        assert await cache.get("n") == b"-4"

    async def test_incr_continues_from_a_set_integer(self, cache: CacheService) -> None:
        await cache.set("n", b"41")
        assert await cache.incr("n") == 42

    @pytest.mark.parametrize(
        "stored", [b"abc", b"1.5", b" 5", b"+5", b"010", b"-0", b"", b"99999999999999999999"]
    )
    async def test_incr_on_non_integer_fails_and_keeps_value(
        self, cache: CacheService, stored: bytes
    ) -> None:
        await cache.set("n", stored)
        with pytest.raises(ValidationError) as exc:
            await cache.incr("n")
        assert _code(exc) == "cache.not_integer"
        assert await cache.get("n") == stored

    async def test_incr_overflow_fails_and_keeps_value(self, cache: CacheService) -> None:
        await cache.set("n", str(INT64_MAX).encode())
        with pytest.raises(ValidationError) as exc:
            await cache.incr("n")
        assert _code(exc) == "cache.not_integer"
        assert await cache.get("n") == str(INT64_MAX).encode()

    @pytest.mark.parametrize("amount", [1.5, True, "1", 2**63, None])
    async def test_incr_refuses_non_integer_amounts(self, cache: CacheService, amount: Any) -> None:
        with pytest.raises(ValidationError) as exc:
            await cache.incr("n", amount)
        assert _code(exc) == "cache.invalid_amount"
        assert await cache.get("n") is None

    async def test_concurrent_incr_is_exact(self, cache: CacheService) -> None:
        await asyncio.gather(*(cache.incr("n", 2, ttl=60) for _ in range(50)))
        assert await cache.get("n") == b"100"

    # -- clear_prefix --------------------------------------------------------------------------

    async def test_clear_prefix_removes_only_matching_keys(self, cache: CacheService) -> None:
        await cache.set_many({"user:1": b"a", "user:2": b"b", "team:1": b"c", "user": b"d"})
        assert await cache.clear_prefix("user:") == 2
        assert await cache.get_many(["user:1", "user:2", "team:1", "user"]) == {"team:1": b"c", "user": b"d"}
        assert await cache.clear_prefix("nothing:") == 0

    async def test_clear_prefix_treats_glob_characters_literally(self, cache: CacheService) -> None:
        await cache.set_many({"a*": b"1", "ab": b"2", "a?": b"3", "a[b]": b"4", "a\\x": b"5"})
        assert await cache.clear_prefix("a*") == 1
        assert await cache.clear_prefix("a[") == 1
        assert await cache.clear_prefix("a\\") == 1
        assert await cache.get_many(["a*", "ab", "a?", "a[b]", "a\\x"]) == {"ab": b"2", "a?": b"3"}

    async def test_clear_prefix_empty_clears_everything(self, cache: CacheService) -> None:
        await cache.set_many({"x": b"1", "y": b"2"})
        assert await cache.clear_prefix("") == 2
        assert await cache.get_many(["x", "y"]) == {}

    # -- json helpers, ping ----------------------------------------------------------------------

    async def test_json_helpers_round_trip(self, cache: CacheService) -> None:
        doc = {"name": "Zoë", "budget": 5_000_000, "models": ["a", "b"], "nested": {"ok": True}}
        await set_json(cache, "doc", doc)
        assert await get_json(cache, "doc") == doc
        assert await get_json(cache, "absent") is None
        await cache.set("broken", b"{not json")
        assert await get_json(cache, "broken") is None

    async def test_json_helper_refuses_unserialisable_values(self, cache: CacheService) -> None:
        for value in ({1, 2}, float("nan"), object()):
            with pytest.raises(ValidationError) as exc:
                await set_json(cache, "doc", value)
            assert _code(exc) == "cache.invalid_value"
        assert await cache.get("doc") is None

    async def test_ping_succeeds_when_backend_is_up(self, cache: CacheService) -> None:
        await cache.ping()

    # -- properties ----------------------------------------------------------------------------

    # Each example starts by clearing its keys, so sharing the function-scoped cache is safe; the
    # method runs on one instance per backend subclass (hence "differing executors").
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    )
    @given(
        ops=st.lists(
            st.tuples(
                st.sampled_from(["set", "add", "delete", "incr", "get"]),
                st.sampled_from(["p:a", "p:b", "p:c"]),
                st.binary(max_size=8),
                st.integers(min_value=-1000, max_value=1000),
            ),
            max_size=25,
        )
    )
    async def test_behaves_like_a_dict(
        self, cache: CacheService, ops: list[tuple[str, str, bytes, int]]
    ) -> None:
        """Without expiry, any sequence of operations matches a plain dict model."""
        await cache.clear_prefix("p:")
        model: dict[str, bytes] = {}
        for op, key, value, amount in ops:
            if op == "set":
                await cache.set(key, value)
                model[key] = value
            elif op == "add":
                assert await cache.add(key, value) is (key not in model)
                model.setdefault(key, value)
            elif op == "delete":
                assert await cache.delete(key) is (key in model)
                model.pop(key, None)
            elif op == "incr":
                current = model.get(key, b"0")
                if re.fullmatch(rb"0|-?[1-9][0-9]{0,17}", current):
                    expected = int(current) + amount
                    assert await cache.incr(key, amount) == expected
                    model[key] = str(expected).encode()
                else:
                    with pytest.raises(ValidationError):
                        await cache.incr(key, amount)
            else:
                assert await cache.get(key) == model.get(key)
        assert await cache.get_many(["p:a", "p:b", "p:c"]) == model

    # -- expiry (needs the 'advance' fixture) ----------------------------------------------------

    async def test_entry_expires_after_its_ttl(self, cache: CacheService, time_travel: Advance) -> None:
        await cache.set("k", b"v", ttl=10)
        await time_travel(9.5)
        assert await cache.get("k") == b"v"
        await time_travel(1)
        assert await cache.get("k") is None
        assert await cache.get_many(["k"]) == {}
        assert await cache.delete("k") is False

    async def test_entry_without_ttl_outlives_others(self, cache: CacheService, time_travel: Advance) -> None:
        await cache.set("forever", b"v")
        await cache.set("short", b"v", ttl=1)
        await time_travel(3600)
        assert await cache.get("forever") == b"v"
        assert await cache.get("short") is None

    async def test_set_many_applies_the_ttl_to_every_item(
        self, cache: CacheService, time_travel: Advance
    ) -> None:
        await cache.set_many({"a": b"1", "b": b"2"}, ttl=5)
        await time_travel(6)
        assert await cache.get_many(["a", "b"]) == {}

    async def test_add_succeeds_again_after_expiry(self, cache: CacheService, time_travel: Advance) -> None:
        assert await cache.add("lock", b"1", ttl=5) is True
        assert await cache.add("lock", b"2", ttl=5) is False
        await time_travel(6)
        assert await cache.add("lock", b"3", ttl=5) is True
        assert await cache.get("lock") == b"3"

    async def test_overwrite_resets_the_ttl(self, cache: CacheService, time_travel: Advance) -> None:
        await cache.set("k", b"v1", ttl=5)
        await time_travel(4)
        await cache.set("k", b"v2", ttl=5)
        await time_travel(4)
        assert await cache.get("k") == b"v2"

    async def test_incr_keeps_the_window_of_the_first_increment(
        self, cache: CacheService, time_travel: Advance
    ) -> None:
        assert await cache.incr("window", ttl=10) == 1
        await time_travel(6)
        assert await cache.incr("window", ttl=10) == 2
        await time_travel(5)
        assert await cache.get("window") is None
        assert await cache.incr("window", ttl=10) == 1

    async def test_clear_prefix_does_not_count_expired_entries(
        self, cache: CacheService, time_travel: Advance
    ) -> None:
        await cache.set("p:live", b"1", ttl=100)
        await cache.set("p:dead", b"2", ttl=1)
        await time_travel(2)
        assert await cache.clear_prefix("p:") == 1

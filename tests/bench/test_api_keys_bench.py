"""Warm-cache ``validate`` with 100,000 keys in the memory store (run with --benchmark-enable)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from maaskit.clock import SystemClock
from maaskit.services.api_keys import ApiKey, DefaultApiKeyService
from maaskit.storage.memory.api_keys import MemoryApiKeyStore

N_KEYS = 100_000


def _drive(coro: Coroutine[Any, Any, ApiKey]) -> ApiKey:
    # A warm-cache validate never suspends: drive the coroutine without an event loop round trip,
    # so the figure is the cost of validate itself (an `await` inside a running request adds ~0.1 us).
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("validate suspended on a warm cache")


@pytest.fixture(scope="module")
def warm() -> tuple[DefaultApiKeyService, list[str]]:
    async def build() -> tuple[DefaultApiKeyService, list[str]]:
        keys = DefaultApiKeyService(
            MemoryApiKeyStore(), SystemClock(), pepper=b"b" * 32, max_cache_entries=N_KEYS
        )
        secrets = [(await keys.create(f"user_{i % 1000}", name=f"k{i}")).secret for i in range(N_KEYS)]
        for secret in secrets:
            await keys.validate(secret)
        return keys, secrets

    return asyncio.run(build())


def test_bench_validate_warm_cache_100k_keys(
    benchmark: Any, warm: tuple[DefaultApiKeyService, list[str]]
) -> None:
    keys, secrets = warm
    assert keys.cached_keys == N_KEYS
    secret = secrets[N_KEYS // 2]
    key = benchmark(lambda: _drive(keys.validate(secret)))
    assert key.name == f"k{N_KEYS // 2}"


def test_bench_validate_warm_cache_rotating_over_1000_keys(
    benchmark: Any, warm: tuple[DefaultApiKeyService, list[str]]
) -> None:
    keys, secrets = warm
    sample = secrets[::100]
    state = {"i": 0}

    def one() -> ApiKey:
        state["i"] = (state["i"] + 1) % len(sample)
        return _drive(keys.validate(sample[state["i"]]))

    benchmark(one)

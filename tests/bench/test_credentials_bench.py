"""Credential selection speed: acquire + release with 20 credentials (run with --benchmark-enable).

Target (issue 5): <= 2 us per acquire + release on this machine, for every strategy. The figures
are reported by pytest-benchmark; speed is not a pass/fail criterion of the normal test run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from maaskit.clock import SystemClock
from maaskit.services.credentials import DefaultCredentialPool, Strategy
from maaskit.storage.memory.credentials import MemoryCredentialStore

N_CREDENTIALS = 20


def _pool(strategy: Strategy) -> DefaultCredentialPool:
    async def build() -> DefaultCredentialPool:
        pool = DefaultCredentialPool(
            MemoryCredentialStore(),
            clock=SystemClock(),
            strategy=strategy,
            model_map={"gpt-4o": {"azure-eu": "gpt4o-prod", "openai": "gpt-4o-2024-08-06"}},
        )
        await pool.load()
        for i in range(N_CREDENTIALS):
            upstream = "azure-eu" if i % 2 else "openai"
            await pool.add(upstream, f"sk-bench-{i:04d}-0123456789abcdef", weight=1 + i % 5)
        return pool

    return asyncio.run(build())


@pytest.mark.parametrize("strategy", list(Strategy), ids=[s.value for s in Strategy])
def test_bench_acquire_release_mapped_model(benchmark: Any, strategy: Strategy) -> None:
    pool = _pool(strategy)
    acquire = pool.acquire

    def one() -> None:
        acquire("gpt-4o").release(200)

    benchmark(one)
    assert sum(s.requests for s in pool.stats()) >= 1


@pytest.mark.parametrize("strategy", list(Strategy), ids=[s.value for s in Strategy])
def test_bench_acquire_release_passthrough_model_one_upstream(benchmark: Any, strategy: Strategy) -> None:
    pool = _pool(strategy)
    acquire = pool.acquire

    def one() -> None:
        acquire("some-model", upstream="openai").release(200, tokens=100)

    benchmark(one)
    assert all(s.upstream == "openai" for s in pool.stats() if s.requests)


def test_bench_acquire_release_with_a_cooling_credential(benchmark: Any) -> None:
    pool = _pool(Strategy.ROUND_ROBIN)
    pool.acquire("gpt-4o").release(429, retry_after=3600)  # one credential rests for an hour

    def one() -> None:
        pool.acquire("gpt-4o").release(200)

    benchmark(one)
    assert sum(1 for s in pool.stats() if not s.available) == 1

"""Speed of the admission gate (run with ``--benchmark-enable``; figures go in the report).

Each benchmark round runs ``OPS`` operations inside one event loop, so the per-operation time is
the reported time divided by ``OPS``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from maaskit.clock import SystemClock
from maaskit.services.budget import BudgetPeriod, PeriodKind
from maaskit.services.rate_limit import AdmissionLimits, DefaultLimitsGate
from maaskit.storage.memory.limits import MemoryLimitsStore

OPS = 1_000

LIMITS = AdmissionLimits.simple(
    "key_bench",
    rpm=10**9,
    tpm=10**10,
    estimated_tokens=500,
    budget_account="key_bench",
    budget_limit_micros=2**52,
    reserve_micros=1_000,
    period=BudgetPeriod(PeriodKind.MONTHLY, timezone="Europe/Berlin"),
)


def test_memory_gate_acquire_settle(benchmark: Any) -> None:
    clock = SystemClock()
    gate = DefaultLimitsGate(MemoryLimitsStore(clock), clock)
    loop = asyncio.new_event_loop()

    async def batch() -> None:
        for _ in range(OPS):
            decision = await gate.acquire(LIMITS)
            assert decision.ticket is not None
            await gate.settle(decision.ticket, actual_tokens=420, actual_micros=800)

    try:
        benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.close()


def test_memory_gate_acquire_only(benchmark: Any) -> None:
    clock = SystemClock()
    gate = DefaultLimitsGate(MemoryLimitsStore(clock), clock)
    loop = asyncio.new_event_loop()

    async def batch() -> None:
        for _ in range(OPS):
            await gate.acquire(LIMITS)

    try:
        benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.close()


def test_redis_gate_acquire_round_trip(benchmark: Any, redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio as redis_asyncio

    from maaskit.storage.redis.limits import RedisLimitsStore

    loop = asyncio.new_event_loop()
    client = redis_asyncio.Redis.from_url(redis_url)
    clock = SystemClock()
    store = RedisLimitsStore(client, prefix=redis_prefix)
    gate = DefaultLimitsGate(store, clock)
    loop.run_until_complete(store.load_scripts())
    n = OPS // 10

    async def batch() -> None:
        for _ in range(n):
            decision = await gate.acquire(LIMITS)
            assert decision.ticket is not None
            await gate.settle(decision.ticket, actual_tokens=420, actual_micros=800)

    async def cleanup() -> None:
        keys = [key async for key in client.scan_iter(f"{redis_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    try:
        benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.run_until_complete(cleanup())
        loop.close()


pytestmark = pytest.mark.filterwarnings("ignore::pytest_benchmark.logger.PytestBenchmarkWarning")

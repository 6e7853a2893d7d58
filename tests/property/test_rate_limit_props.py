"""GCRA guarantees, on the memory backend (Redis runs the same integer arithmetic; see the contract).

Guarantee: in any interval of ``w`` ms, admitted units <= ``L + w * L / period_ms``; and a
refused request's ``retry_after`` is exact: after waiting it, the request is admitted.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from maaskit.services.rate_limit import DefaultRateLimiter, RateKind, RateLimit
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.testing.clock import FakeClock

steps = st.lists(st.tuples(st.integers(0, 5_000), st.integers(1, 4)), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(1, 20), period_s=st.integers(1, 10), steps=steps)
def test_never_more_than_burst_plus_refill(limit: int, period_s: int, steps: list[tuple[int, int]]) -> None:
    async def run() -> list[tuple[int, int]]:
        clock = FakeClock()
        limiter = DefaultRateLimiter(MemoryLimitsStore(clock))
        rule = RateLimit(limit, period_s, RateKind.TOKENS)
        admitted: list[tuple[int, int]] = []
        t = 0
        for wait_ms, cost in steps:
            clock.advance(seconds=wait_ms / 1000)
            t += wait_ms
            decision = await limiter.hit("s", rule, cost)
            assert 0 <= decision.remaining <= limit
            if decision.allowed:
                admitted.append((t, cost))
        return admitted

    admitted = asyncio.run(run())
    period_ms = period_s * 1000
    for i, (start, _) in enumerate(admitted):
        total = 0
        for when, cost in admitted[i:]:
            total += cost
            window = when - start
            assert total * period_ms <= limit * period_ms + window * limit


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 50), period_s=st.integers(1, 120), costs=st.lists(st.integers(1, 50), max_size=30)
)
def test_retry_after_is_exact(limit: int, period_s: int, costs: list[int]) -> None:
    async def run() -> None:
        clock = FakeClock()
        limiter = DefaultRateLimiter(MemoryLimitsStore(clock))
        rule = RateLimit(limit, period_s, RateKind.TOKENS)
        for cost in costs:
            decision = await limiter.hit("s", rule, cost)
            if decision.allowed:
                continue
            if cost > limit:
                assert decision.retry_after is None
                continue
            assert decision.retry_after_ms is not None
            assert decision.retry_after_ms > 0
            if decision.retry_after_ms > 1:
                clock.advance(seconds=(decision.retry_after_ms - 1) / 1000)
                assert not (await limiter.hit("s", rule, cost)).allowed  # one ms early: still refused
                clock.advance(seconds=0.001)
            else:
                clock.advance(seconds=decision.retry_after_ms / 1000)
            assert (await limiter.hit("s", rule, cost)).allowed

    asyncio.run(run())

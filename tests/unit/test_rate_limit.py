"""Rate-limit decisions, headers, validation, and the Redis round-trip budget of the gate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from maaskit.errors import UnavailableError, ValidationError
from maaskit.services.rate_limit import (
    AdmissionLimits,
    AdmissionPlan,
    BudgetCheck,
    DefaultLimitsGate,
    DefaultRateLimiter,
    RateCheck,
    RateKind,
    RateLimit,
    format_reset,
)
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.storage.ports.limits import BudgetLine, RateOp, ReserveRequest
from maaskit.testing.clock import FakeClock


def test_format_reset_matches_openai_style() -> None:
    assert format_reset(20) == "20ms"
    assert format_reset(1500) == "1.5s"
    assert format_reset(360_000) == "6m0s"
    assert format_reset(3_723_000) == "1h2m3s"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": -1},
        {"limit": 1.5},
        {"limit": True},
        {"limit": 10, "period_seconds": 0},
        {"limit": 2**40, "period_seconds": 86400},
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        RateLimit(**kwargs)
    assert info.value.code == "rate_limit.invalid"


async def test_decision_fields_and_headers(clock: FakeClock) -> None:
    limiter = DefaultRateLimiter(MemoryLimitsStore(clock))
    tpm = RateLimit.per_minute(1_000, "tokens")
    d = await limiter.hit("k", tpm, cost=250)
    assert d.allowed
    assert (d.remaining, d.reset_after_ms, d.retry_after) == (750, 15_000, None)
    assert d.reset_at.timestamp() == clock.time() + 15
    assert d.headers() == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "750",
        "x-ratelimit-reset-tokens": "15s",
    }
    refused = await limiter.hit("k", tpm, cost=800)
    assert not refused.allowed
    assert refused.retry_after_ms == 3_000  # 50 tokens short, 1000/min = 1 per 60 ms
    assert refused.error().retry_after == 3.0
    await limiter.reset("k", RateKind.TOKENS)
    assert (await limiter.hit("k", tpm, cost=1_000)).allowed


async def test_bad_subject_and_cost(clock: FakeClock) -> None:
    limiter = DefaultRateLimiter(MemoryLimitsStore(clock))
    with pytest.raises(ValidationError):
        await limiter.hit("", RateLimit(1))
    with pytest.raises(ValidationError):
        await limiter.hit("k", RateLimit(1), cost=-1)
    with pytest.raises(ValidationError):
        await limiter.adjust("k", RateLimit(1), 1.5)  # type: ignore[arg-type]
    gate = DefaultLimitsGate(MemoryLimitsStore(clock), clock)
    ok = await gate.acquire(AdmissionLimits.simple("k", rpm=5))
    assert ok.ticket is not None
    with pytest.raises(ValidationError):
        await gate.settle(ok.ticket, actual_tokens=-1, actual_micros=0)


@pytest.fixture
async def counting_redis(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[Any, list[str]]]:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(redis_url)
    commands: list[str] = []
    original = client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        commands.append(str(args[0]))
        return await original(*args, **options)

    client.execute_command = counting  # type: ignore[method-assign]
    yield client, commands
    keys = [key async for key in client.scan_iter(f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_redis_gate_uses_one_round_trip_per_admit_and_settle(
    counting_redis: tuple[Any, list[str]], redis_prefix: str, clock: FakeClock
) -> None:
    from maaskit.storage.redis.limits import RedisLimitsStore

    client, commands = counting_redis
    store = RedisLimitsStore(client, prefix=redis_prefix)  # server time
    await store.load_scripts()
    gate = DefaultLimitsGate(store, clock)
    limits = AdmissionLimits.simple(
        "key",
        rpm=100,
        tpm=10_000,
        estimated_tokens=500,
        budget_account="key",
        budget_limit_micros=1_000_000,
        reserve_micros=2_000,
    )
    commands.clear()
    decision = await gate.acquire(limits)
    assert decision.allowed
    assert commands == ["EVALSHA"]
    assert decision.ticket is not None
    commands.clear()
    await gate.settle(decision.ticket, actual_tokens=420, actual_micros=1_500)
    assert commands == ["EVALSHA"]
    commands.clear()
    refused = await gate.acquire(AdmissionLimits.simple("key", rpm=1))  # another limit: refused, one trip
    assert not refused.allowed
    assert commands == ["EVALSHA"]


async def test_admission_headers_show_the_most_restrictive_limit_per_kind(clock: FakeClock) -> None:
    store = MemoryLimitsStore(clock)
    gate = DefaultLimitsGate(store, clock)
    plan = AdmissionPlan(
        rates=[
            RateCheck("key", RateLimit(10, 60, RateKind.REQUESTS), 1),
            RateCheck("team", RateLimit(3, 60, RateKind.REQUESTS), 1),
            RateCheck("key", RateLimit(1000, 60, RateKind.TOKENS), 0),
            RateCheck("team", RateLimit(5000, 60, RateKind.TOKENS), 0),
        ],
        budgets=[BudgetCheck("acct", 10_000)],
    )
    decision = await gate.acquire_plan(plan, 300, 5)
    fast = decision.headers()
    assert fast == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "20s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "700",
        "x-ratelimit-reset-tokens": "18s",
    }
    assert len(decision.rates) == 4
    assert decision.headers() == fast  # from the per-rate decisions


class _FailingLedger(MemoryLimitsStore):
    """A ledger whose reservations fail (a database that cannot be reached)."""

    __slots__ = ()

    async def reserve(self, request: ReserveRequest) -> Any:
        raise UnavailableError("database.unavailable")


async def test_a_failing_ledger_takes_no_rate_units(clock: FakeClock) -> None:
    # the SQL-backed store counted the rate units, then the ledger raised: two failed attempts
    # used up two requests and their token estimates
    from maaskit.storage.sql.limits import SqlBackedLimitsStore

    rates = MemoryLimitsStore(clock)
    store = SqlBackedLimitsStore(rates, _FailingLedger(clock))
    ops = [RateOp("rpm:k", 1, 2, 60_000), RateOp("tpm:k", 500, 1000, 60_000)]
    reserve = ReserveRequest("r1", 10, (BudgetLine("key:k", 0, None, 100),))
    for _ in range(2):
        with pytest.raises(UnavailableError):
            await store.admit(ops, reserve)
    admitted = await rates.admit(ops, None)  # the whole minute is still there
    assert admitted.ok
    assert (await rates.admit(ops, None)).ok

"""One contract for every limits backend: memory, SQL (SQLite + PostgreSQL) and Redis.

The ledger contract runs on all four; the admission-gate contract (rate limits + budget in one
atomic step) on memory and Redis, the two ``LimitsStore`` backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from maaskit.errors import NotFoundError, QuotaExceededError, RateLimitedError
from maaskit.services.budget import (
    BudgetPeriod,
    DefaultBudgetLedger,
    PeriodKind,
    Reservation,
    SettlementStatus,
)
from maaskit.services.rate_limit import (
    AdmissionLimits,
    BudgetCheck,
    DefaultLimitsGate,
    DefaultRateLimiter,
    RateCheck,
    RateKind,
    RateLimit,
)
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.storage.ports.limits import BudgetLine, LedgerStore, LimitsStore, ReserveRequest
from maaskit.storage.sql import Database
from maaskit.testing.clock import FakeClock
from redis_support import redis_client


async def _redis_store(url: str, prefix: str, clock: FakeClock) -> AsyncIterator[Any]:
    from maaskit.storage.redis.limits import RedisLimitsStore

    async with redis_client(url, prefix) as client:
        store = RedisLimitsStore(client, prefix=prefix, clock=clock)
        await store.load_scripts()
        yield store


def _server(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(backend, url, redis prefix), resolving server fixtures outside the event loop."""
    kind = str(request.param)
    if kind == "postgres":
        return kind, request.getfixturevalue("postgres_url"), ""
    if kind == "redis":
        return kind, request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return kind, "sqlite+aiosqlite:///:memory:", ""


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def ledger_backend(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """The ledger backend under test."""
    return _server(request)


@pytest.fixture(params=["memory", "redis"])
def limits_backend(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """The limits-store backend under test."""
    return _server(request)


@pytest.fixture
async def ledger_store(ledger_backend: tuple[str, str, str], clock: FakeClock) -> AsyncIterator[LedgerStore]:
    """Every :class:`LedgerStore` backend."""
    kind, url, prefix = ledger_backend
    if kind == "memory":
        yield MemoryLimitsStore(clock)
    elif kind == "redis":
        async for store in _redis_store(url, prefix, clock):
            yield store
    else:
        from maaskit.storage.sql.budget import SqlLedgerStore

        db = Database(url)
        await db.migrate()
        try:
            yield SqlLedgerStore(db, clock)
        finally:
            if kind == "postgres":
                await db.downgrade("base")
            await db.aclose()


@pytest.fixture
async def limits_store(limits_backend: tuple[str, str, str], clock: FakeClock) -> AsyncIterator[LimitsStore]:
    """Every :class:`LimitsStore` backend."""
    kind, url, prefix = limits_backend
    if kind == "memory":
        yield MemoryLimitsStore(clock)
    else:
        async for store in _redis_store(url, prefix, clock):
            yield store


# ---------------------------------------------------------------------------------- ledger


async def test_reserve_commit_release_balances(ledger_store: LedgerStore, clock: FakeClock) -> None:
    ledger = DefaultBudgetLedger(ledger_store, clock)
    r1 = await ledger.reserve("acct", 300, 1_000)
    r2 = await ledger.reserve("acct", 500, 1_000)
    bal = await ledger.balance("acct", 1_000)
    assert (bal.committed_micros, bal.reserved_micros, bal.available_micros) == (0, 800, 200)
    with pytest.raises(QuotaExceededError) as info:
        await ledger.reserve("acct", 201, 1_000)
    assert info.value.code == "budget.exceeded"
    assert info.value.params["available_micros"] == 200
    s1 = await ledger.commit(r1, 250)
    assert (s1.status, s1.committed_micros, s1.overage_micros, s1.already_settled) == (
        SettlementStatus.COMMITTED,
        250,
        0,
        False,
    )
    s2 = await ledger.release(r2)
    assert s2.status is SettlementStatus.RELEASED
    bal = await ledger.balance("acct", 1_000)
    assert (bal.committed_micros, bal.reserved_micros, bal.overage_micros) == (250, 0, 0)
    await ledger.reserve("acct", 750, 1_000)  # exactly up to the limit
    with pytest.raises(QuotaExceededError):
        await ledger.reserve("acct", 1, 1_000)


async def test_settle_is_idempotent_and_returns_the_first_result(
    ledger_store: LedgerStore, clock: FakeClock
) -> None:
    ledger = DefaultBudgetLedger(ledger_store, clock)
    r = await ledger.reserve("acct", 400, 1_000)
    first = await ledger.commit(r, 100)
    again = await ledger.commit(r, 400)
    released = await ledger.release(r)
    for later in (again, released):
        assert later.already_settled
        assert (later.status, later.committed_micros) == (SettlementStatus.COMMITTED, 100)
    assert first.committed_micros == 100
    bal = await ledger.balance("acct", 1_000)
    assert (bal.committed_micros, bal.reserved_micros) == (100, 0)


async def test_actual_above_reservation_commits_the_reservation_and_records_overage(
    ledger_store: LedgerStore, clock: FakeClock
) -> None:
    ledger = DefaultBudgetLedger(ledger_store, clock)
    r = await ledger.reserve("acct", 1_000, 1_000)
    settled = await ledger.commit(r, 1_700)
    assert (settled.committed_micros, settled.overage_micros) == (1_000, 700)
    bal = await ledger.balance("acct", 1_000)
    assert (bal.committed_micros, bal.overage_micros) == (1_000, 700)
    assert bal.committed_micros <= bal.limit_micros


async def test_unknown_reservation_is_not_found(ledger_store: LedgerStore, clock: FakeClock) -> None:
    with pytest.raises(NotFoundError) as info:
        await ledger_store.settle("no-such-reservation", 5)
    assert info.value.code == "budget.reservation_not_found"


async def test_multi_line_reservation_is_all_or_nothing(ledger_store: LedgerStore) -> None:
    lines = (BudgetLine("key", 0, None, 1_000), BudgetLine("team", 0, None, 500))
    ok = await ledger_store.reserve(ReserveRequest("r1", 400, lines))
    assert ok.ok
    refused = await ledger_store.reserve(ReserveRequest("r2", 200, lines))  # team would be 600 > 500
    assert not refused.ok
    assert (await ledger_store.balance("key", 0)).reserved_micros == 400
    assert (await ledger_store.balance("team", 0)).reserved_micros == 400
    done = await ledger_store.settle("r1", 300)
    assert done.committed_micros == 300
    for account in ("key", "team"):
        bal = await ledger_store.balance(account, 0)
        assert (bal.committed_micros, bal.reserved_micros) == (300, 0)


async def test_periods_are_separate_and_reservations_settle_in_their_own_period(
    ledger_store: LedgerStore, clock: FakeClock
) -> None:
    ledger = DefaultBudgetLedger(ledger_store, clock)
    daily = BudgetPeriod(PeriodKind.DAILY)
    clock.set(clock.now().replace(hour=23, minute=59))
    late = await ledger.reserve("acct", 800, 1_000, daily)
    with pytest.raises(QuotaExceededError) as info:
        await ledger.reserve("acct", 300, 1_000, daily)
    assert info.value.retry_after == 60.0  # one minute to the reset
    clock.advance(minutes=2)  # the next day: a fresh budget
    fresh = await ledger.reserve("acct", 1_000, 1_000, daily)
    await ledger.commit(late, 500)  # settles against yesterday
    today = await ledger.balance("acct", 1_000, daily)
    assert (today.committed_micros, today.reserved_micros) == (0, 1_000)
    yesterday = await ledger_store.balance("acct", int(late.period_start.timestamp()))
    assert (yesterday.committed_micros, yesterday.reserved_micros) == (500, 0)
    assert fresh.period_start > late.period_start


async def test_concurrent_reservations_admit_exactly_n(ledger_store: LedgerStore, clock: FakeClock) -> None:
    ledger = DefaultBudgetLedger(ledger_store, clock)
    n, each = 37, 1_000

    async def attempt() -> Reservation | None:
        try:
            return await ledger.reserve("hot", each, n * each)
        except QuotaExceededError:
            return None

    results = await asyncio.gather(*(attempt() for _ in range(500)))
    admitted = [r for r in results if r is not None]
    assert len(admitted) == n
    assert len({r.id for r in admitted}) == n
    await asyncio.gather(*(ledger.commit(r, each) for r in admitted))
    bal = await ledger.balance("hot", n * each)
    assert (bal.committed_micros, bal.reserved_micros) == (n * each, 0)


# ------------------------------------------------------------------------- rates and gate


async def test_rate_limiter_counts_and_refuses_with_retry_after(
    limits_store: LimitsStore, clock: FakeClock
) -> None:
    limiter = DefaultRateLimiter(limits_store)
    rpm = RateLimit(3, 60)
    decisions = [await limiter.hit("k1", rpm) for _ in range(3)]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    assert all(d.allowed for d in decisions)
    refused = await limiter.hit("k1", rpm)
    assert not refused.allowed
    assert refused.retry_after_ms == 20_000
    with pytest.raises(RateLimitedError) as info:
        await limiter.require("k1", rpm)
    assert info.value.retry_after == 20.0
    clock.advance(seconds=19.999)
    assert not (await limiter.hit("k1", rpm)).allowed
    clock.advance(seconds=0.001)
    assert (await limiter.hit("k1", rpm)).allowed
    assert (await limiter.hit("other", rpm)).allowed  # subjects are independent


async def test_a_refusal_by_several_limits_waits_for_the_longest(
    limits_store: LimitsStore, clock: FakeClock
) -> None:
    # rpm and tpm both refuse: the error said the rpm wait (30 s), and a retry then was refused
    gate = DefaultLimitsGate(limits_store, clock)
    limits = AdmissionLimits.simple("k", rpm=2, tpm=1000, estimated_tokens=500)
    admitted = [await gate.acquire(limits) for _ in range(2)]
    for decision in admitted:
        assert decision.allowed
        assert decision.ticket is not None
        await gate.settle(decision.ticket, actual_tokens=1000, actual_micros=0)  # twice the estimate
    refused = await gate.acquire(limits)
    assert sorted((r.kind.value, r.retry_after_ms) for r in refused.rates if not r.allowed) == [
        ("requests", 30_000),
        ("tokens", 90_000),
    ]
    assert isinstance(refused.refusal, RateLimitedError)
    assert refused.refusal.retry_after == 90.0
    clock.advance(seconds=89.999)
    assert not (await gate.acquire(limits)).allowed
    clock.advance(seconds=0.001)
    assert (await gate.acquire(limits)).allowed


async def test_token_limit_adjust_refunds_and_charges(limits_store: LimitsStore, clock: FakeClock) -> None:
    limiter = DefaultRateLimiter(limits_store)
    tpm = RateLimit(1_000, 60, RateKind.TOKENS)
    first = await limiter.hit("k", tpm, cost=800)
    assert first.remaining == 200
    await limiter.adjust("k", tpm, -600)  # used 200 of the 800 estimated
    assert (await limiter.hit("k", tpm, cost=800)).allowed
    await limiter.adjust("k", tpm, 500)  # used 1_300 instead of 800: debt
    blocked = await limiter.hit("k", tpm, cost=1)
    assert not blocked.allowed
    too_big = await limiter.hit("k2", tpm, cost=1_001)
    assert not too_big.allowed
    assert too_big.too_large
    assert too_big.retry_after is None
    assert too_big.error().code == "rate_limit.request_too_large"


async def test_gate_is_all_or_nothing(limits_store: LimitsStore, clock: FakeClock) -> None:
    gate = DefaultLimitsGate(limits_store, clock)
    ledger = DefaultBudgetLedger(limits_store, clock)
    limiter = DefaultRateLimiter(limits_store)
    rpm = RateLimit(10, 60)
    # The budget refuses: no request slot is used.
    over_budget = AdmissionLimits((RateCheck("k", rpm),), (BudgetCheck("k", 100),), reserve_micros=101)
    decision = await gate.acquire(over_budget)
    assert not decision.allowed
    assert decision.ticket is None
    assert isinstance(decision.refusal, QuotaExceededError)
    assert (await limiter.hit("k", RateLimit(10, 60))).remaining == 9  # only this hit counted
    # The rate limit refuses: no budget is reserved.
    tight = RateLimit(1, 60)
    assert (await gate.acquire(AdmissionLimits((RateCheck("t", tight),)))).allowed
    refused = await gate.acquire(AdmissionLimits((RateCheck("t", tight),), (BudgetCheck("t", 100),), 50))
    assert not refused.allowed
    assert isinstance(refused.refusal, RateLimitedError)
    assert (await ledger.balance("t", 100)).reserved_micros == 0
    with pytest.raises(RateLimitedError):
        refused.raise_if_refused()


async def test_gate_settle_commits_and_corrects_tokens_once(
    limits_store: LimitsStore, clock: FakeClock
) -> None:
    gate = DefaultLimitsGate(limits_store, clock)
    ledger = DefaultBudgetLedger(limits_store, clock)
    limits = AdmissionLimits.simple(
        "key",
        rpm=100,
        tpm=1_000,
        estimated_tokens=600,
        budget_account="key",
        budget_limit_micros=10_000,
        reserve_micros=4_000,
    )
    decision = await gate.acquire(limits)
    assert decision.allowed
    assert decision.ticket is not None
    assert decision.budget_available_micros == (6_000,)
    headers = decision.headers()
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["x-ratelimit-remaining-tokens"] == "400"
    settled = await gate.settle(decision.ticket, actual_tokens=100, actual_micros=1_234)
    assert settled is not None
    assert settled.committed_micros == 1_234
    again = await gate.settle(decision.ticket, actual_tokens=100, actual_micros=1_234)
    assert again is not None
    assert again.already_settled
    # 500 tokens were given back exactly once: 900 free.
    probe = await DefaultRateLimiter(limits_store).hit("key", RateLimit(1_000, 60, RateKind.TOKENS), cost=900)
    assert probe.allowed
    assert probe.remaining == 0
    bal = await ledger.balance("key", 10_000)
    assert (bal.committed_micros, bal.reserved_micros) == (1_234, 0)
    second = await gate.acquire(limits.__class__(limits.rates[:1], limits.budgets, 4_000))
    assert second.ticket is not None
    released = await gate.release(second.ticket)
    assert released is not None
    assert released.status is SettlementStatus.RELEASED


async def test_gate_concurrent_admissions_exactly_n(limits_store: LimitsStore, clock: FakeClock) -> None:
    gate = DefaultLimitsGate(limits_store, clock)
    limits = AdmissionLimits.simple(
        "hot", rpm=10_000, budget_account="hot", budget_limit_micros=25 * 700, reserve_micros=700
    )
    decisions = await asyncio.gather(*(gate.acquire(limits) for _ in range(500)))
    assert sum(d.allowed for d in decisions) == 25
    used = await DefaultRateLimiter(limits_store).hit("hot", RateLimit(10_000, 60))
    assert used.remaining == 10_000 - 25 - 1  # refused admissions used no request slot

"""Contract of ``release_stale`` (:class:`StaleReservationSweeper`): SQL (SQLite, PostgreSQL) and Redis.

A replica that crashes between reserve and settle leaves its reservation open; ``release_stale``
gives such reservations back, atomically and at most once, however it races settles and other
sweeps. The memory store has no sweep (its reservations die with its process).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, NamedTuple, TypeVar

import pytest

from maaskit.services.budget import DefaultBudgetLedger, SettlementStatus
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.storage.ports.limits import (
    BudgetLine,
    LedgerStore,
    ReserveRequest,
    StaleReservationSweeper,
)
from maaskit.storage.sql import Database
from maaskit.testing.clock import FakeClock
from redis_support import redis_client

ROUNDS = 60
T = TypeVar("T")


class Sweepable(NamedTuple):
    """The store under test and a second instance on the same data (another replica)."""

    store: Any
    twin: Any


@pytest.fixture(params=["sqlite", "sqlite-limits", "postgres", "redis"])
async def sweepable(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Sweepable]:
    """Every backend with ``release_stale``."""
    kind = str(request.param)
    if kind == "redis":
        from maaskit.storage.redis.limits import RedisLimitsStore

        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        async with redis_client(url, prefix) as client:
            store = RedisLimitsStore(client, prefix=prefix, clock=clock)
            twin = RedisLimitsStore(client, prefix=prefix, clock=clock)
            await store.load_scripts()
            yield Sweepable(store, twin)
        return
    from maaskit.storage.sql.budget import SqlLedgerStore
    from maaskit.storage.sql.limits import SqlBackedLimitsStore

    url = request.getfixturevalue("postgres_url") if kind == "postgres" else "sqlite+aiosqlite:///:memory:"
    db = Database(url)
    await db.migrate()
    try:
        ledger = SqlLedgerStore(db, clock)
        if kind == "sqlite-limits":
            yield Sweepable(SqlBackedLimitsStore(MemoryLimitsStore(clock), ledger), ledger)
        else:
            # one SQLite database in one process is one store; PostgreSQL: a second replica
            yield Sweepable(ledger, SqlLedgerStore(db, clock) if kind == "postgres" else ledger)
    finally:
        if kind == "postgres":
            await db.downgrade("base")
        await db.aclose()


async def _after(yields: int, job: Awaitable[T]) -> T:
    """*job* after *yields* turns of the event loop (so the racers interleave differently)."""
    for _ in range(yields):
        await asyncio.sleep(0)
    return await job


def _cutoff(clock: FakeClock, age_hours: float = 1) -> int:
    return int((clock.time() - age_hours * 3600) * 1000)


async def _reserved(store: LedgerStore, account: str = "acct") -> tuple[int, int]:
    bal = await store.balance(account, 0)
    return bal.committed_micros, bal.reserved_micros


async def test_backends_implement_the_protocol(sweepable: Sweepable) -> None:
    assert isinstance(sweepable.store, StaleReservationSweeper)
    assert not isinstance(MemoryLimitsStore(), StaleReservationSweeper)


async def test_old_open_reservation_is_released_recent_and_settled_ones_untouched(
    sweepable: Sweepable, clock: FakeClock
) -> None:
    store = sweepable.store
    ledger = DefaultBudgetLedger(store, clock)
    old = await ledger.reserve("acct", 300, 1_000)
    settled = await ledger.reserve("acct", 200, 1_000)
    await ledger.commit(settled, 150)
    clock.advance(hours=2)
    recent = await ledger.reserve("acct", 100, 1_000)
    assert await _reserved(store) == (150, 400)

    assert await store.release_stale(_cutoff(clock), limit=10) == 1
    assert await _reserved(store) == (150, 100)  # the old one's 300 is back
    assert await store.release_stale(_cutoff(clock), limit=10) == 0  # nothing left that old

    # a late settle of the expired reservation: already settled, nothing charged
    for late in (await ledger.commit(old, 300), await ledger.release(old)):
        assert late.already_settled
        assert (late.status, late.committed_micros, late.overage_micros) == (SettlementStatus.EXPIRED, 0, 0)
    assert await _reserved(store) == (150, 100)
    # the settled one still answers with its own outcome
    again = await ledger.commit(settled, 999)
    assert (again.status, again.committed_micros, again.already_settled) == (
        SettlementStatus.COMMITTED,
        150,
        True,
    )
    # the recent one settles normally
    done = await ledger.commit(recent, 80)
    assert (done.status, done.already_settled) == (SettlementStatus.COMMITTED, False)
    assert await _reserved(store) == (230, 0)


async def test_cutoff_is_exclusive(sweepable: Sweepable, clock: FakeClock) -> None:
    store = sweepable.store
    await DefaultBudgetLedger(store, clock).reserve("acct", 10, 1_000)
    created_ms = int(clock.time() * 1000)
    assert await store.release_stale(created_ms, limit=5) == 0
    assert await store.release_stale(created_ms + 1, limit=5) == 1
    assert await _reserved(store) == (0, 0)


async def test_limit_is_honoured_oldest_first(sweepable: Sweepable, clock: FakeClock) -> None:
    store = sweepable.store
    ledger = DefaultBudgetLedger(store, clock)
    reservations = []
    for _ in range(5):
        reservations.append(await ledger.reserve("acct", 100, 10_000))
        clock.advance(minutes=1)
    clock.advance(hours=2)
    cutoff = _cutoff(clock)
    assert await store.release_stale(cutoff, limit=2) == 2
    assert await _reserved(store) == (0, 300)
    # the two oldest went first
    for i, reservation in enumerate(reservations):
        outcome = await ledger.commit(reservation, 100)
        assert outcome.already_settled == (i < 2)
    assert await _reserved(store) == (300, 0)
    assert await store.release_stale(cutoff, limit=2) == 0


async def test_batches_until_empty(sweepable: Sweepable, clock: FakeClock) -> None:
    store = sweepable.store
    ledger = DefaultBudgetLedger(store, clock)
    for _ in range(5):
        await ledger.reserve("acct", 100, 10_000)
    clock.advance(hours=2)
    counts = [await store.release_stale(_cutoff(clock), limit=2) for _ in range(4)]
    assert counts == [2, 2, 1, 0]
    assert await _reserved(store) == (0, 0)


async def test_multi_line_reservation_is_released_on_every_line(
    sweepable: Sweepable, clock: FakeClock
) -> None:
    store = sweepable.store
    lines = (BudgetLine("key", 0, None, 1_000), BudgetLine("team", 0, None, 500))
    assert (await store.reserve(ReserveRequest("multi", 400, lines))).ok
    clock.advance(hours=2)
    assert await store.release_stale(_cutoff(clock)) == 1
    for account in ("key", "team"):
        assert await _reserved(store, account) == (0, 0)
    late = await store.settle("multi", 400)
    assert (late.status, late.already_settled) == (SettlementStatus.EXPIRED, True)
    for account in ("key", "team"):
        assert await _reserved(store, account) == (0, 0)


async def test_invalid_limit_is_refused(sweepable: Sweepable) -> None:
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="limit"):
            await sweepable.store.release_stale(0, limit=bad)


async def test_concurrent_settle_and_sweeps_never_release_twice(
    sweepable: Sweepable, clock: FakeClock
) -> None:
    store, twin = sweepable
    one_line = (BudgetLine("acct", 0, None, 10**9),)
    two_lines = (BudgetLine("acct", 0, None, 10**9), BudgetLine("team", 0, None, 10**9))
    committed = {"acct": 0, "team": 0}
    for round_ in range(ROUNDS):
        rid = f"race-{round_}"
        lines = two_lines if round_ % 2 else one_line
        assert (await store.reserve(ReserveRequest(rid, 100, lines))).ok
        clock.advance(hours=2)
        cutoff = _cutoff(clock)
        actual = 1 + round_
        # the settle starts 0..44 loop turns late: before, between and after the sweeps' steps
        outcome, swept, swept_twin = await asyncio.gather(
            _after(round_ % 12 * 4, store.settle(rid, actual)),
            _after(round_ % 3, store.release_stale(cutoff)),
            _after(round_ % 5, twin.release_stale(cutoff)),
        )
        assert swept + swept_twin == (1 if outcome.already_settled else 0)
        if outcome.already_settled:
            assert (outcome.status, outcome.committed_micros) == (SettlementStatus.EXPIRED, 0)
        else:
            assert (outcome.status, outcome.committed_micros) == (SettlementStatus.COMMITTED, actual)
            for line in lines:
                committed[line.account] += actual
        for account, spent in committed.items():
            assert await _reserved(store, account) == (spent, 0)


async def test_concurrent_sweeps_release_each_reservation_once(
    sweepable: Sweepable, clock: FakeClock
) -> None:
    store, twin = sweepable
    ledger = DefaultBudgetLedger(store, clock)
    for _ in range(30):
        await ledger.reserve("acct", 7, 10**9)
    clock.advance(hours=2)
    cutoff = _cutoff(clock)
    counts = await asyncio.gather(*(s.release_stale(cutoff, limit=4) for s in (store, twin) * 6))
    total = sum(counts)
    while True:  # whatever the batches left
        more = await store.release_stale(cutoff, limit=4)
        if not more:
            break
        total += more
    assert total == 30
    assert await _reserved(store) == (0, 0)


# ----------------------------------------------------------------------------- Redis only


async def test_redis_index_follows_admit_and_settle_and_drops_expired_hashes(
    redis_url: str, redis_prefix: str, clock: FakeClock
) -> None:
    from maaskit.storage.redis.limits import RedisLimitsStore

    async with redis_client(redis_url, redis_prefix) as client:
        store = RedisLimitsStore(client, prefix=redis_prefix, clock=clock)
        index = f"{redis_prefix}resq"
        line = (BudgetLine("acct", 0, None, 1_000),)
        assert (await store.reserve(ReserveRequest("r1", 100, line))).ok
        assert (await store.reserve(ReserveRequest("r2", 200, line))).ok
        assert await client.zcard(index) == 2
        assert await client.zscore(index, f"{redis_prefix}res:r1") == int(clock.time() * 1000)
        await store.settle("r1", 50)
        assert await client.zcard(index) == 1  # settled: out of the index
        await client.delete(f"{redis_prefix}res:r2")  # its hash expired (no sweeper ran for days)
        clock.advance(hours=2)
        assert await store.release_stale(_cutoff(clock)) == 0  # nothing to give back any more
        assert await client.zcard(index) == 0  # but the index does not keep it
        assert await _reserved(store) == (50, 200)  # (the lost hash's amount stays reserved)

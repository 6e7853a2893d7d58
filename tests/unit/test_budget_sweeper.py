"""``ReservationSweeper``: abandoned budget reservations are given back in the background."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from maaskit.errors import UnavailableError, ValidationError
from maaskit.services.budget import DefaultBudgetLedger, ReservationSweeper, SettlementStatus
from maaskit.settings import Settings
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.budget import SqlLedgerStore
from maaskit.testing import FakeClock, build_test_app


class Gate:
    """A fake ``sleep``: each call records its delay and waits until the test opens the gate."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._queue: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await self._queue.get()

    def open(self) -> None:
        self._queue.put_nowait(None)


class FakeSweepStore:
    """A ledger that only sweeps: returns the scripted batch counts and records its calls."""

    def __init__(self, *results: int | Exception) -> None:
        self.results = list(results)
        self.calls: list[tuple[int, int]] = []

    async def release_stale(self, created_before_ms: int, *, limit: int = 1000) -> int:
        self.calls.append((created_before_ms, limit))
        result = self.results.pop(0) if self.results else 0
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture
async def sql_store(clock: FakeClock) -> AsyncIterator[SqlLedgerStore]:
    db = Database("sqlite+aiosqlite:///:memory:")
    await db.migrate()
    yield SqlLedgerStore(db, clock)
    await db.aclose()


async def _until(condition: Any) -> None:
    for _ in range(10_000):
        if await condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_sweeper_releases_after_the_timeout_and_stops_cleanly(
    sql_store: SqlLedgerStore, clock: FakeClock
) -> None:
    gate = Gate()
    sweeper = ReservationSweeper(sql_store, clock, timeout=3600, interval=60, sleep=gate)
    ledger = DefaultBudgetLedger(sql_store, clock)
    crashed = await ledger.reserve("acct", 300, 1_000)
    await sweeper.start()
    await sweeper.start()  # idempotent
    assert sweeper.running

    clock.advance(minutes=59)  # not old enough yet
    gate.open()
    await _until(lambda: _waiting(gate, 2))
    assert (await ledger.balance("acct", 1_000)).reserved_micros == 300

    clock.advance(minutes=2)
    with structlog.testing.capture_logs() as logs:
        gate.open()
        await _until(lambda: _waiting(gate, 3))
    assert (await ledger.balance("acct", 1_000)).reserved_micros == 0
    assert [(e["event"], e["released"]) for e in logs if e["event"] == "budget.reservations_expired"] == [
        ("budget.reservations_expired", 1)
    ]
    late = await ledger.commit(crashed, 300)
    assert (late.status, late.already_settled) == (SettlementStatus.EXPIRED, True)
    assert gate.waits == [60.0, 60.0, 60.0]

    task = sweeper._task
    await sweeper.aclose()
    await sweeper.aclose()  # idempotent
    assert not sweeper.running
    assert task is not None
    assert task.done()
    assert sweeper._task is None


async def _waiting(gate: Gate, calls: int) -> bool:
    return len(gate.waits) >= calls


async def test_sweep_loops_while_batches_are_full() -> None:
    clock = FakeClock()
    store = FakeSweepStore(2, 2, 1, 2)
    sweeper = ReservationSweeper(store, clock, timeout=10, batch_size=2)  # type: ignore[arg-type]
    assert await sweeper.sweep() == 5
    cutoff = int((clock.time() - 10) * 1000)
    assert store.calls == [(cutoff, 2)] * 3


async def test_one_sweep_is_bounded() -> None:
    store = FakeSweepStore(*([1] * 500))
    sweeper = ReservationSweeper(store, FakeClock(), batch_size=1)  # type: ignore[arg-type]
    assert await sweeper.sweep() == ReservationSweeper.max_batches
    assert len(store.calls) == ReservationSweeper.max_batches


async def test_loop_survives_store_errors(clock: FakeClock) -> None:
    gate = Gate()
    store = FakeSweepStore(UnavailableError("database.unavailable"), RuntimeError("boom"), 1)
    sweeper = ReservationSweeper(store, clock, sleep=gate)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        await sweeper.start()
        for calls in (2, 3, 4):
            gate.open()
            await _until(lambda calls=calls: _waiting(gate, calls))
    await sweeper.aclose()
    assert len(store.calls) == 3
    failures = [e["error"] for e in logs if e["event"] == "budget.sweep_failed"]
    assert failures == ["database.unavailable", "RuntimeError"]
    assert any(e["event"] == "budget.reservations_expired" for e in logs)


async def test_a_store_without_release_stale_is_skipped(clock: FakeClock) -> None:
    sweeper = ReservationSweeper(MemoryLimitsStore(clock), clock)
    assert not sweeper.supported
    await sweeper.start()
    assert not sweeper.running
    assert await sweeper.sweep() == 0
    await sweeper.aclose()


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout": 0},
        {"timeout": -5},
        {"timeout": math.nan},
        {"interval": 0},
        {"interval": math.inf},
        {"interval": True},
        {"batch_size": 0},
        {"batch_size": 1.5},
    ],
)
def test_invalid_configuration_is_refused(clock: FakeClock, bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        ReservationSweeper(MemoryLimitsStore(clock), clock, **bad)
    assert info.value.code == "config.invalid"


@pytest.mark.parametrize("name", ["reservation_timeout", "reservation_sweep_interval"])
@pytest.mark.parametrize("value", [0, -1, "inf", "nan"])
def test_settings_refuse_non_positive_durations(name: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{name: value})
    assert info.value.params["setting"] == f"MAASKIT_{name.upper()}"


def test_settings_defaults() -> None:
    settings = Settings()
    assert (settings.reservation_timeout, settings.reservation_sweep_interval) == (3600.0, 60.0)


async def test_app_runs_the_sweeper_with_the_sql_backend_only() -> None:
    async with build_test_app(reservation_timeout=120, reservation_sweep_interval=5) as app:
        sweeper = app.get(ReservationSweeper)
        assert sweeper.supported
        assert sweeper.running
        assert (sweeper._timeout, sweeper._interval) == (120.0, 5.0)
    assert not sweeper.running
    async with build_test_app(limits_backend="memory") as app:
        assert not app.registry.is_registered(ReservationSweeper)


async def test_app_runs_the_sweeper_with_the_redis_backend(redis_url: str) -> None:
    async with build_test_app(redis_url=redis_url, limits_backend="redis") as app:
        sweeper = app.get(ReservationSweeper)
        assert sweeper.supported
        assert sweeper.running
    assert not sweeper.running


async def test_a_sweep_deletes_settled_reservations_older_than_the_timeout(
    sql_db: Database, clock: FakeClock
) -> None:
    # every request with a budget left a settled row behind, and nothing ever deleted them
    from sqlalchemy import func, select

    sql_store = SqlLedgerStore(sql_db, clock)
    from maaskit.storage.sql.tables.budget import BudgetReservationRow

    table = BudgetReservationRow.__table__  # type: ignore[attr-defined]

    async def rows() -> int:
        async with sql_db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    ledger = DefaultBudgetLedger(sql_store, clock)
    old = [await ledger.reserve("acct", 10, 10**9) for _ in range(5)]
    for reservation in old:
        await ledger.commit(reservation, 5)
    clock.advance(seconds=3600)
    recent = await ledger.reserve("acct", 10, 10**9)
    await ledger.commit(recent, 5)
    still_open = await ledger.reserve("acct", 10, 10**9)
    clock.advance(seconds=1)
    sweeper = ReservationSweeper(sql_store, clock, timeout=3600, batch_size=2)
    assert await sweeper.sweep() == 0  # nothing abandoned: the open one is recent
    assert await rows() == 2  # the recent settled row and the open one stay
    assert (await ledger.commit(recent, 5)).already_settled  # its idempotency record is kept
    assert not (await ledger.commit(still_open, 5)).already_settled
    balance = await sql_store.balance("acct", 0)
    assert (balance.committed_micros, balance.reserved_micros) == (35, 0)  # counters untouched

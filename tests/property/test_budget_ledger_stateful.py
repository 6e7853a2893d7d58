"""Stateful test of the budget ledger against a plain model: reserve/commit/release/time travel.

Runs on the memory backend and on SQLite; on SQLite also sweeps abandoned reservations
(``release_stale``: the oldest open ones first, at most ``limit``). Invariants after every step:
committed spend never exceeds the limit in any period, and every period's counters equal the
model's.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from maaskit.errors import QuotaExceededError
from maaskit.services.budget import BudgetPeriod, DefaultBudgetLedger, PeriodKind, Reservation
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.storage.ports.limits import StaleReservationSweeper
from maaskit.testing.clock import FakeClock

LIMIT = 1_000
PERIOD = BudgetPeriod(PeriodKind.MONTHLY, timezone="Europe/Berlin", anchor_day=31)
ACCOUNTS = ("a", "b")


class LedgerMachine(RuleBasedStateMachine):
    """The ledger vs. a dictionary model."""

    backend = "memory"
    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(datetime(2026, 1, 29, tzinfo=UTC))
        self.db: Any = None
        if self.backend == "memory":
            store: Any = MemoryLimitsStore(self.clock)
        else:
            from maaskit.storage.sql import Database
            from maaskit.storage.sql.budget import SqlLedgerStore

            self.db = Database("sqlite+aiosqlite:///:memory:")
            self.run(self.db.migrate())
            store = SqlLedgerStore(self.db, self.clock)
        self.ledger = DefaultBudgetLedger(store, self.clock)
        self.sweeper: StaleReservationSweeper | None = (
            store if isinstance(store, StaleReservationSweeper) else None
        )
        # (account, period_start) -> [committed, reserved]
        self.model: dict[tuple[str, datetime], list[int]] = {}
        self.settled: dict[str, tuple[str, int]] = {}
        # open reservations: id -> (created at, epoch seconds; the reservation)
        self.open: dict[str, tuple[float, Reservation]] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        if self.db is not None:
            self.run(self.db.aclose())
        self.loop.close()

    def _counter(self, account: str, start: datetime) -> list[int]:
        return self.model.setdefault((account, start), [0, 0])

    @rule(target=reservations, account=st.sampled_from(ACCOUNTS), amount=st.integers(0, 600))
    def reserve(self, account: str, amount: int) -> Reservation | None:
        start, _ = PERIOD.bounds(self.clock.now())
        counter = self._counter(account, start)
        fits = counter[0] + counter[1] + amount <= LIMIT
        try:
            reservation = self.run(self.ledger.reserve(account, amount, LIMIT, PERIOD))
        except QuotaExceededError:
            assert not fits
            return None
        assert fits
        assert reservation.period_start == start
        counter[1] += amount
        self.open[reservation.id] = (self.clock.time(), reservation)
        return reservation

    @rule(reservation=reservations, actual=st.integers(0, 900))
    def commit(self, reservation: Reservation | None, actual: int) -> None:
        if reservation is None:
            return
        outcome = self.run(self.ledger.commit(reservation, actual))
        if reservation.id in self.settled:
            assert outcome.already_settled
            assert (outcome.status.value, outcome.committed_micros) == self.settled[reservation.id]
            return
        assert not outcome.already_settled
        committed = min(actual, reservation.amount_micros)
        assert (outcome.committed_micros, outcome.overage_micros) == (committed, actual - committed)
        counter = self._counter(reservation.account, reservation.period_start)
        counter[0] += committed
        counter[1] -= reservation.amount_micros
        self.settled[reservation.id] = ("committed", committed)
        del self.open[reservation.id]

    @rule(reservation=reservations)
    def release(self, reservation: Reservation | None) -> None:
        if reservation is None:
            return
        outcome = self.run(self.ledger.release(reservation))
        if reservation.id in self.settled:
            assert outcome.already_settled
            assert outcome.status.value == self.settled[reservation.id][0]
            return
        counter = self._counter(reservation.account, reservation.period_start)
        counter[1] -= reservation.amount_micros
        self.settled[reservation.id] = ("released", 0)
        del self.open[reservation.id]

    @precondition(lambda self: self.sweeper is not None)
    @rule(later=st.integers(0, 6), age_hours=st.integers(0, 4), limit=st.integers(1, 3))
    def sweep(self, later: int, age_hours: int, limit: int) -> None:
        """*later* hours on, release what is older than *age_hours* (at most *limit*)."""
        assert self.sweeper is not None
        self.clock.advance(later * 3600)
        cutoff = self.clock.time() - age_hours * 3600
        stale = sorted((created, rid) for rid, (created, _) in self.open.items() if created < cutoff)
        released = self.run(self.sweeper.release_stale(int(cutoff * 1000), limit=limit))
        assert released == min(limit, len(stale))
        for _, rid in stale[:released]:  # the oldest first
            _, reservation = self.open.pop(rid)
            counter = self._counter(reservation.account, reservation.period_start)
            counter[1] -= reservation.amount_micros
            self.settled[rid] = ("expired", 0)

    @rule(hours=st.integers(1, 24 * 20))
    def advance(self, hours: int) -> None:
        self.clock.advance(timedelta(hours=hours).total_seconds())

    @invariant()
    def balances_match_and_never_exceed(self) -> None:
        start, _ = PERIOD.bounds(self.clock.now())
        for account in ACCOUNTS:
            self._counter(account, start)
        for (account, period_start), (committed, reserved) in self.model.items():
            assert committed <= LIMIT
            assert committed + reserved <= LIMIT
            store = self.ledger._store
            bal = self.run(store.balance(account, int(period_start.timestamp())))
            assert (bal.committed_micros, bal.reserved_micros) == (committed, reserved)


class SqliteLedgerMachine(LedgerMachine):
    """The same machine on SQLite."""

    backend = "sqlite"


TestLedgerMemory = LedgerMachine.TestCase
TestLedgerMemory.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestLedgerSqlite = SqliteLedgerMachine.TestCase
TestLedgerSqlite.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)

"""In-process rate-limit, budget and admission state (:class:`~maaskit.storage.ports.limits.LimitsStore`).

Exact and atomic within one event loop: every operation runs to completion without an
``await`` in between, so concurrent tasks can never interleave inside a check-and-write.
It is not shared between processes (use the Redis backend for several replicas) and must be
used from one event loop thread.

Example::

    from maaskit.clock import SystemClock
    from maaskit.storage.memory.limits import MemoryLimitsStore

    store = MemoryLimitsStore(SystemClock())
"""

from __future__ import annotations

from collections.abc import Sequence

from maaskit.clock import Clock, SystemClock
from maaskit.errors import ConflictError, NotFoundError
from maaskit.storage.ports.limits import (
    AdmitOutcome,
    LedgerBalance,
    RateAdjust,
    RateOp,
    RateOutcome,
    ReserveOutcome,
    ReserveRequest,
    SettlementStatus,
    SettleOutcome,
    gcra_adjust,
    gcra_drain,
)

__all__ = ["MemoryLimitsStore"]


class _Reservation:
    __slots__ = ("amount", "budgets", "outcome")

    def __init__(self, amount: int, budgets: list[list[int]]) -> None:
        self.amount = amount
        self.budgets = budgets
        self.outcome: SettleOutcome | None = None


class MemoryLimitsStore:
    """Rate-limit buckets, budget counters and reservations in dictionaries.

    Args:
        clock: the time source for rate limits (inject a ``FakeClock`` in tests).

    Settled reservations are remembered (for idempotent settles) until
    :meth:`forget_settled` is called; a long-running process should call it periodically.
    """

    __slots__ = ("_budgets", "_clock", "_rates", "_reservations")

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._rates: dict[str, list[int]] = {}
        # (account, period_start) -> [committed, reserved, overage]
        self._budgets: dict[tuple[str, int], list[int]] = {}
        self._reservations: dict[str, _Reservation] = {}

    def __repr__(self) -> str:
        return f"MemoryLimitsStore({len(self._rates)} rate keys, {len(self._budgets)} budgets)"

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000 + 0.001)  # float-safe whole milliseconds

    async def admit(self, rates: Sequence[RateOp], reserve: ReserveRequest | None) -> AdmitOutcome:
        """Check every rate op and the reservation; apply all only if all pass (see the port)."""
        return self.admit_now(rates, reserve)

    def admit_now(self, rates: Sequence[RateOp], reserve: ReserveRequest | None) -> AdmitOutcome:
        """The synchronous body of :meth:`admit` (for benchmarks and sync callers)."""
        now = self._now_ms()
        ok = True
        pending: list[tuple[str, int, int]] = []
        table = self._rates
        checks: list[tuple[bool, int, int]] = []
        for op in rates:
            state = table.get(op.key)
            if state is None:
                level, ts = 0, now
            else:
                level, ts = gcra_drain(state[0], state[1], now, op.limit)
            want = level + op.cost * op.period_ms
            if want <= op.limit * op.period_ms:
                checks.append((True, level, want))
                pending.append((op.key, want, ts))
            else:
                ok = False
                checks.append((False, level, want))
        reserve_outcome: ReserveOutcome | None = None
        counters: list[list[int]] = []
        if reserve is not None:
            if reserve.reservation_id in self._reservations:
                raise ConflictError("budget.reservation_mismatch", reservation_id=reserve.reservation_id)
            amount = reserve.amount_micros
            budget_ok = True
            balances: list[LedgerBalance] = []
            for line in reserve.lines:
                counter = self._budgets.get((line.account, line.period_start))
                if counter is None:
                    counter = [0, 0, 0]
                counters.append(counter)
                if counter[0] + counter[1] + amount > line.limit_micros:
                    budget_ok = False
            if budget_ok and ok:
                for line, counter in zip(reserve.lines, counters, strict=True):
                    counter[1] += amount
                    self._budgets[(line.account, line.period_start)] = counter
                self._reservations[reserve.reservation_id] = _Reservation(amount, counters)
            for counter in counters:
                balances.append(LedgerBalance(counter[0], counter[1], counter[2]))
            ok = ok and budget_ok
            reserve_outcome = ReserveOutcome(budget_ok, tuple(balances))
        if ok:
            for key, level, ts in pending:
                table[key] = [level, ts]
            outcomes = tuple([RateOutcome(True, want, now) for _, _, want in checks])
        else:
            outcomes = tuple([RateOutcome(passed, level, now) for passed, level, _ in checks])
        return AdmitOutcome(ok, now, outcomes, reserve_outcome)

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        """Reserve on every line, all or nothing (see :class:`~maaskit.storage.ports.limits.LedgerStore`)."""
        outcome = self.admit_now((), request).reserve
        assert outcome is not None
        return outcome

    async def settle(self, reservation_id: str, actual_micros: int | None) -> SettleOutcome:
        """Commit or release a reservation exactly once (see the port)."""
        outcome = self.settle_now((), reservation_id, actual_micros)
        assert outcome is not None
        return outcome

    async def settle_admission(
        self,
        adjustments: Sequence[RateAdjust],
        reservation_id: str | None,
        actual_micros: int | None,
    ) -> SettleOutcome | None:
        """Rate corrections plus the reservation's settlement in one step (see the port)."""
        return self.settle_now(adjustments, reservation_id, actual_micros)

    def settle_now(
        self,
        adjustments: Sequence[RateAdjust],
        reservation_id: str | None,
        actual_micros: int | None,
    ) -> SettleOutcome | None:
        """The synchronous body of :meth:`settle_admission`."""
        outcome: SettleOutcome | None = None
        if reservation_id is not None:
            res = self._reservations.get(reservation_id)
            if res is None:
                raise NotFoundError("budget.reservation_not_found", reservation_id=reservation_id)
            if res.outcome is not None:
                first = res.outcome
                return SettleOutcome(
                    first.reservation_id, first.status, first.committed_micros, first.overage_micros, True
                )
            amount = res.amount
            if actual_micros is None:
                committed, overage, status = 0, 0, SettlementStatus.RELEASED
            else:
                committed = actual_micros if actual_micros < amount else amount
                overage = actual_micros - committed
                status = SettlementStatus.COMMITTED
            for counter in res.budgets:
                counter[1] -= amount
                counter[0] += committed
                counter[2] += overage
            outcome = SettleOutcome(reservation_id, status, committed, overage, False)
            res.outcome = outcome
        if adjustments:
            now = self._now_ms()
            table = self._rates
            for adj in adjustments:
                state = table.get(adj.key)
                level, ts = (0, now) if state is None else gcra_drain(state[0], state[1], now, adj.limit)
                table[adj.key] = [gcra_adjust(level, adj.delta, adj.limit, adj.period_ms), ts]
        return outcome

    async def balance(self, account: str, period_start: int) -> LedgerBalance:
        """The counters of one budget period (zeros when it has none)."""
        counter = self._budgets.get((account, period_start))
        if counter is None:
            return LedgerBalance()
        return LedgerBalance(counter[0], counter[1], counter[2])

    async def reset_rate(self, key: str) -> None:
        """Forget the rate-limit state of *key*."""
        self._rates.pop(key, None)

    def forget_settled(self) -> int:
        """Drop settled reservations (their idempotency record); returns how many were dropped."""
        settled = [rid for rid, res in self._reservations.items() if res.outcome is not None]
        for rid in settled:
            del self._reservations[rid]
        return len(settled)

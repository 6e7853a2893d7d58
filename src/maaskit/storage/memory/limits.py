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

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from maaskit.clock import Clock, SystemClock
from maaskit.errors import ConflictError, NotFoundError, ValidationError
from maaskit.storage.ports.limits import (
    AdmitOutcome,
    BudgetLine,
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

__all__ = ["BoundAdmit", "BoundSettle", "MemoryLimitsStore"]


# A reservation: [amount, [budget counter, ...], first SettleOutcome or None] (a list: the
# cheapest mutable record to build on the hot path).
_Reservation = list[Any]

# (now_ms, levels, available per budget) of an admission that passed
_Admitted = tuple[int, list[int], tuple[int, ...]]
#: ``admit(estimate, reservation_id, amount)`` of :meth:`MemoryLimitsStore.compile_bound`.
BoundAdmit = Callable[[int, str, int], "_Admitted | None"]
#: ``settle(reservation_id, estimate, actual_tokens, actual_micros)`` of the same.
BoundSettle = Callable[["str | None", int, "int | None", "int | None"], "SettleOutcome | None"]


class MemoryLimitsStore:
    """Rate-limit buckets, budget counters and reservations in dictionaries.

    Args:
        clock: the time source for rate limits (inject a ``FakeClock`` in tests).
        keep_settled: how many settled reservations are remembered for idempotent settles; the
            oldest are forgotten beyond it (a repeated settle of a forgotten one raises
            ``budget.reservation_not_found``), so memory stays bounded in a long-running process.
    """

    __slots__ = ("_budgets", "_clock", "_keep_settled", "_rates", "_reservations", "_settled", "_time")

    def __init__(self, clock: Clock | None = None, *, keep_settled: int = 100_000) -> None:
        if isinstance(keep_settled, bool) or not isinstance(keep_settled, int) or keep_settled < 1:
            raise ValidationError("config.invalid", setting="keep_settled", reason="must be an integer >= 1")
        self._clock: Clock = clock or SystemClock()
        # the system clock's time() is time.time(): call it directly on the hot path
        self._time = time.time if type(self._clock) is SystemClock else self._clock.time
        self._rates: dict[str, list[int]] = {}
        # (account, period_start) -> [committed, reserved, overage]
        self._budgets: dict[tuple[str, int], list[int]] = {}
        self._reservations: dict[str, _Reservation] = {}
        # settled reservations are kept (for idempotent settles) up to a bound, oldest dropped first
        self._settled: deque[str] = deque()
        self._keep_settled = keep_settled

    def __repr__(self) -> str:
        return f"MemoryLimitsStore({len(self._rates)} rate keys, {len(self._budgets)} budgets)"

    def _now_ms(self) -> int:
        return int(self._time() * 1000 + 0.001)  # float-safe whole milliseconds

    async def admit(self, rates: Sequence[RateOp], reserve: ReserveRequest | None) -> AdmitOutcome:
        """Check every rate op and the reservation; apply all only if all pass (see the port)."""
        return self.admit_now(rates, reserve)

    def admit_now(self, rates: Sequence[RateOp], reserve: ReserveRequest | None) -> AdmitOutcome:
        """The synchronous body of :meth:`admit` (for benchmarks and sync callers)."""
        if reserve is None:
            rates_ok, budget_ok, now, levels, allowed, balances = self.admit_raw(rates, None, 0, ())
            reserve_outcome = None
        else:
            rates_ok, budget_ok, now, levels, allowed, balances = self.admit_raw(
                rates, reserve.reservation_id, reserve.amount_micros, reserve.lines
            )
            reserve_outcome = ReserveOutcome(
                budget_ok, tuple(LedgerBalance(bal[0], bal[1], bal[2]) for bal in balances)
            )
        outcomes = tuple(RateOutcome(ok, level, now) for ok, level in zip(allowed, levels, strict=True))
        return AdmitOutcome(rates_ok and budget_ok, now, outcomes, reserve_outcome)

    def admit_raw(
        self,
        rates: Sequence[tuple[str, int, int, int]],
        reservation_id: str | None,
        amount: int,
        lines: Sequence[BudgetLine],
    ) -> tuple[bool, bool, int, list[int], list[bool], list[list[int]]]:
        """:meth:`admit_now` without the records: the synchronous fast path of the limits gate.

        Args:
            rates: ``(key, cost, limit, period_ms)`` per check (a :class:`RateOp` or a plain tuple).
            reservation_id: reserve *amount* on every line under this id; ``None``: no budget.
            amount: micro-dollars to reserve.
            lines: the budgets (ignored without a reservation id).

        Returns:
            ``(rates_ok, budget_ok, now_ms, levels, allowed, balances)``: nothing was written
            unless both flags are true; ``levels`` per check (after this admission when applied,
            else the current level), ``allowed`` per check, and per line the store's live
            ``[committed, reserved, overage]`` counter after the reservation (or at the refusal;
            empty without a reservation id). Read the counters at once and never change them.

        Raises:
            ConflictError: ``budget.reservation_mismatch`` when the reservation id is taken.
        """
        now = int(self._time() * 1000 + 0.001)  # float-safe whole milliseconds
        rates_ok = True
        table = self._rates
        levels: list[int] = []
        allowed: list[bool] = []
        # per op: (state list or None, drained level, ts, wanted level)
        pending: list[tuple[list[int] | None, int, int, int]] = []
        for key, cost, limit, period in rates:
            state = table.get(key)
            if state is None:
                level, ts = 0, now
            else:
                level, ts = state
                if now > ts:  # gcra_drain, inlined
                    level -= (now - ts) * limit
                    if level < 0:
                        level = 0
                    ts = now
            want = level + cost * period
            pending.append((state, level, ts, want))
            if want <= limit * period:
                allowed.append(True)
            else:
                rates_ok = False
                allowed.append(False)
        budget_ok = True
        counters: list[list[int]] = []
        if reservation_id is not None:
            reservations = self._reservations
            if reservation_id in reservations:
                raise ConflictError("budget.reservation_mismatch", reservation_id=reservation_id)
            budgets = self._budgets
            for line in lines:
                counter = budgets.get((line[0], line[1]))  # (account, period_start)
                if counter is None:
                    counter = [0, 0, 0]
                counters.append(counter)
                if counter[0] + counter[1] + amount > line[3]:  # limit_micros
                    budget_ok = False
            if budget_ok and rates_ok:
                for line, counter in zip(lines, counters, strict=True):
                    if counter[1] == 0 and counter[0] == 0 and counter[2] == 0:
                        # possibly new (re-inserting an existing all-zero counter is harmless)
                        budgets[(line[0], line[1])] = counter
                    counter[1] += amount
                reservations[reservation_id] = [amount, counters, None]
        if rates_ok and budget_ok:
            for (key, _c, _l, _p), (state, _level, ts, want) in zip(rates, pending, strict=True):
                if state is None:
                    table[key] = [want, ts]
                else:
                    state[0] = want
                    state[1] = ts
                levels.append(want)
        else:
            levels = [p[1] for p in pending]
        return rates_ok, budget_ok, now, levels, allowed, counters

    def bind(
        self, rate_keys: Sequence[str], budgets: Sequence[tuple[str, int]]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """The live state of *rate_keys* and of the *budgets* ``(account, period_start)`` counters.

        Missing entries are created empty (``[0, 0]``: a full bucket; ``[0, 0, 0]``: nothing spent),
        which behaves exactly like an absent one. The store never replaces or drops these lists, so
        a caller may keep them and pass them to :meth:`admit_bound` for as long as the store lives.
        """
        table = self._rates
        states = [table.setdefault(key, [0, 0]) for key in rate_keys]
        counters = [self._budgets.setdefault((account, start), [0, 0, 0]) for account, start in budgets]
        return states, counters

    def admit_bound(
        self,
        rates: Sequence[tuple[list[int], int | None, int, int]],
        estimate: int,
        reservation_id: str | None,
        amount: int,
        budgets: Sequence[tuple[list[int], int]],
        counters: list[list[int]],
    ) -> tuple[int, list[int]] | None:
        """:meth:`admit_raw` over states from :meth:`bind`, for the admission that passes.

        Args:
            rates: ``(state, cost, limit, period_ms)`` per check; a ``None`` cost is *estimate*.
            estimate: the cost of the checks without one (a token estimate).
            reservation_id: the reservation (``None``: no budget).
            amount: micro-dollars to reserve on every budget.
            budgets: ``(counter, limit_micros)`` per budget line.
            counters: the same counters as a list (kept by the reservation).

        Returns:
            ``(now_ms, levels after)`` when everything passed and was applied; ``None`` when
            anything would refuse (nothing was written: ask :meth:`admit_raw` for the details).
        """
        now = int(self._time() * 1000 + 0.001)  # float-safe whole milliseconds
        levels: list[int] = []
        for state, cost, limit, period in rates:  # check only: nothing is written in this loop
            level, ts = state
            if now > ts:  # gcra_drain, inlined
                level -= (now - ts) * limit
                if level < 0:
                    level = 0
            level += (estimate if cost is None else cost) * period
            if level > limit * period:
                return None
            levels.append(level)
        if reservation_id is not None:
            for counter, limit in budgets:
                if counter[0] + counter[1] + amount > limit:
                    return None
            reservations = self._reservations
            if reservation_id in reservations:
                return None  # admit_raw raises the conflict
            for counter, _limit in budgets:
                counter[1] += amount
            reservations[reservation_id] = [amount, counters, None]
        for (state, _c, _l, _p), level in zip(rates, levels, strict=True):
            state[0] = level
            if state[1] < now:  # time never runs backwards for a counter (see gcra_drain)
                state[1] = now
        return now, levels

    def compile_bound(
        self,
        rates: Sequence[tuple[list[int], int | None, int, int]],
        budgets: Sequence[tuple[list[int], int]],
        counters: list[list[int]],
    ) -> tuple[BoundAdmit, BoundSettle]:
        """``(admit, settle)`` for one admission plan, over states from :meth:`bind`.

        The same results as :meth:`admit_bound` and :meth:`settle_now`, with everything they look
        up bound once (the hot path of an in-process limits gate):

        * ``admit(estimate, reservation_id, amount)`` returns ``(now_ms, levels, available)`` when
          every check passed and all was applied (``available``: per budget, what is left after
          the reservation), else ``None`` with nothing written — ask :meth:`admit_raw` why;
          without a budget nothing is reserved (the id is not recorded);
        * ``settle(reservation_id, estimate, actual_tokens, actual_micros)`` settles the
          reservation once (``None`` figures: a release) and corrects the checks without a fixed
          cost by ``actual_tokens - estimate`` (a release gives the estimate back); a repeated
          call changes nothing and returns the first outcome with ``already_settled``; a ``None``
          id (no budget) applies the token corrections only and returns ``None``.

        Args:
            rates: ``(state, cost, limit, period_ms)`` per check; a ``None`` cost is the estimate.
            budgets: ``(counter, limit_micros)`` per budget line.
            counters: the same counters as a list (kept by each reservation).
        """
        now_ms = self._time
        reservations = self._reservations
        settled = self._settled
        keep = self._keep_settled
        commit, released = SettlementStatus.COMMITTED, SettlementStatus.RELEASED
        token_states = tuple(
            (state, limit, period, 2 * limit * period) for state, cost, limit, period in rates if cost is None
        )
        admit = self._compile_admit(rates, budgets, counters)

        def settle(
            reservation_id: str | None, estimate: int, actual_tokens: int | None, actual_micros: int | None
        ) -> SettleOutcome | None:
            if reservation_id is None:  # no budget: only the token corrections
                adjust(estimate, actual_tokens)
                return None
            # _settle_reservation, inlined: this is the settle of every admitted request
            res = reservations.get(reservation_id)
            if res is None:
                raise NotFoundError("budget.reservation_not_found", reservation_id=reservation_id)
            first = res[2]
            if first is not None:
                return SettleOutcome(first[0], first[1], first[2], first[3], True)
            amount = res[0]
            if actual_micros is None:
                committed = overage = 0
                status = released
            else:
                committed = actual_micros if actual_micros < amount else amount
                overage = actual_micros - committed
                status = commit
            for counter in res[1]:
                counter[1] -= amount
                counter[0] += committed
                counter[2] += overage
            outcome = SettleOutcome(reservation_id, status, committed, overage, False)
            res[2] = outcome
            settled.append(reservation_id)
            if len(settled) > keep:
                reservations.pop(settled.popleft(), None)
            adjust(estimate, actual_tokens)
            return outcome

        def adjust(estimate: int, actual_tokens: int | None) -> None:
            delta = -estimate if actual_tokens is None else actual_tokens - estimate
            if delta and token_states:
                now = int(now_ms() * 1000 + 0.001)
                for state, limit, period, cap in token_states:  # gcra_drain + gcra_adjust, inlined
                    level, ts = state
                    if now > ts:
                        level -= (now - ts) * limit
                        if level < 0:
                            level = 0
                        state[1] = now
                    level += delta * period
                    state[0] = 0 if level < 0 else (cap if level > cap else level)

        return admit, settle

    def _compile_admit(
        self,
        rates: Sequence[tuple[list[int], int | None, int, int]],
        budgets: Sequence[tuple[list[int], int]],
        counters: list[list[int]],
    ) -> BoundAdmit:
        """The ``admit`` of :meth:`compile_bound`: straight-line code for up to two checks and one
        budget (an API key's requests/min, tokens/min and budget), :meth:`admit_bound` beyond."""
        reservations = self._reservations
        if len(rates) > 2 or len(budgets) > 1:
            admit_bound = self.admit_bound
            lines = tuple(budgets)

            def admit_any(estimate: int, reservation_id: str, amount: int) -> _Admitted | None:
                done = admit_bound(rates, estimate, reservation_id, amount, lines, counters)
                if done is None:
                    return None
                return done[0], done[1], tuple(limit - c[0] - c[1] for c, limit in lines)

            return admit_any
        now_ms = self._time
        unused: list[int] = [0, 0]  # the state of a check a plan does not have (never refuses)
        first, second = (*rates, (unused, 0, 1, 1), (unused, 0, 1, 1))[:2]
        one, two = len(rates) >= 1, len(rates) == 2
        state1, cost1, limit1, period1 = first
        state2, cost2, limit2, period2 = second
        capacity1, capacity2 = limit1 * period1, limit2 * period2
        has_budget = len(budgets) == 1
        counter, budget_limit = budgets[0] if has_budget else ([0, 0, 0], 0)

        def admit(estimate: int, reservation_id: str, amount: int) -> _Admitted | None:
            now = int(now_ms() * 1000 + 0.001)  # float-safe whole milliseconds
            level1, ts1 = state1  # gcra_drain, inlined; nothing is written before every check passed
            if now > ts1:
                level1 -= (now - ts1) * limit1
                if level1 < 0:
                    level1 = 0
            level1 += (estimate if cost1 is None else cost1) * period1
            if level1 > capacity1:
                return None
            level2, ts2 = state2
            if now > ts2:
                level2 -= (now - ts2) * limit2
                if level2 < 0:
                    level2 = 0
            level2 += (estimate if cost2 is None else cost2) * period2
            if level2 > capacity2:
                return None
            if has_budget:
                free = budget_limit - counter[0] - counter[1] - amount
                if free < 0 or reservation_id in reservations:
                    return None  # (a taken id: admit_raw raises the conflict)
                counter[1] += amount
                reservations[reservation_id] = [amount, counters, None]
                available: tuple[int, ...] = (free,)
            else:
                available = ()  # no budget: nothing is reserved (the ticket carries no id)
            state1[0] = level1
            if ts1 < now:  # time never runs backwards for a counter (see gcra_drain)
                state1[1] = now
            state2[0] = level2
            if ts2 < now:
                state2[1] = now
            return now, ([level1, level2] if two else [level1] if one else []), available

        return admit

    def sync_ops(self) -> tuple[Callable[..., Any], ...] | None:
        """``(admit_raw, settle_now, bind, compile_bound)``: the synchronous fast path a limits gate
        may use instead of awaiting :meth:`admit` and :meth:`settle_admission` (same results, no
        coroutine hops).

        ``None`` when a subclass overrides one of the asynchronous methods (its override must run).
        """
        cls = type(self)
        base = MemoryLimitsStore
        if (
            cls.admit is not base.admit
            or cls.settle_admission is not base.settle_admission
            or cls.admit_now is not base.admit_now
        ):
            return None
        return self.admit_raw, self.settle_now, self.bind, self.compile_bound

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
        adjustments: Sequence[tuple[str, int, int, int]],
        reservation_id: str | None,
        actual_micros: int | None,
    ) -> SettleOutcome | None:
        """The synchronous body of :meth:`settle_admission` (adjustments may be plain tuples)."""
        outcome: SettleOutcome | None = None
        if reservation_id is not None:
            outcome = self._settle_reservation(reservation_id, actual_micros)
            if outcome.already_settled:
                return outcome
        if adjustments:
            now = int(self._time() * 1000 + 0.001)
            table = self._rates
            for key, delta, limit, period_ms in adjustments:  # RateAdjust or plain tuples
                state = table.get(key)
                if state is None:
                    table[key] = [gcra_adjust(0, delta, limit, period_ms), now]
                else:
                    level, ts = gcra_drain(state[0], state[1], now, limit)
                    state[0] = gcra_adjust(level, delta, limit, period_ms)
                    state[1] = ts
        return outcome

    def _settle_reservation(self, reservation_id: str, actual_micros: int | None) -> SettleOutcome:
        """Commit (or with ``None`` release) a reservation once; a repeat returns the first outcome."""
        res = self._reservations.get(reservation_id)
        if res is None:
            raise NotFoundError("budget.reservation_not_found", reservation_id=reservation_id)
        first = res[2]
        if first is not None:
            return SettleOutcome(first[0], first[1], first[2], first[3], True)
        amount = res[0]
        if actual_micros is None:
            committed, overage, status = 0, 0, SettlementStatus.RELEASED
        else:
            committed = actual_micros if actual_micros < amount else amount
            overage = actual_micros - committed
            status = SettlementStatus.COMMITTED
        for counter in res[1]:
            counter[1] -= amount
            counter[0] += committed
            counter[2] += overage
        outcome = SettleOutcome(reservation_id, status, committed, overage, False)
        res[2] = outcome
        settled = self._settled
        settled.append(reservation_id)
        if len(settled) > self._keep_settled:
            self._reservations.pop(settled.popleft(), None)
        return outcome

    async def balance(self, account: str, period_start: int) -> LedgerBalance:
        """The counters of one budget period (zeros when it has none)."""
        counter = self._budgets.get((account, period_start))
        if counter is None:
            return LedgerBalance()
        return LedgerBalance(counter[0], counter[1], counter[2])

    async def reset_rate(self, key: str) -> None:
        """Forget the rate-limit state of *key* (the next request starts with a full bucket)."""
        state = self._rates.get(key)
        if state is not None:  # emptied in place: lists handed out by bind() stay live
            state[0] = 0
            state[1] = 0

    def forget_settled(self) -> int:
        """Drop settled reservations (their idempotency record); returns how many were dropped."""
        settled = [rid for rid, res in self._reservations.items() if res[2] is not None]
        for rid in settled:
            del self._reservations[rid]
        self._settled.clear()
        return len(settled)

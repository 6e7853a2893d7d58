"""Durable budgets without Redis: rate limits in memory, budget reservations in SQL.

The single-process default when no Redis is configured (``MAASKIT_LIMITS_BACKEND=sql`` or
``auto`` without ``MAASKIT_REDIS_URL``): rate-limit state is per process (it only spans a
minute), while committed spend survives restarts in ``maaskit_budget_*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from maaskit.storage.ports.limits import (
    AdmitOutcome,
    LedgerBalance,
    LedgerStore,
    LimitsStore,
    RateAdjust,
    RateOp,
    ReserveOutcome,
    ReserveRequest,
    SettleOutcome,
    StaleReservationSweeper,
)

__all__ = ["SqlBackedLimitsStore"]


class SqlBackedLimitsStore:
    """A :class:`~maaskit.storage.ports.limits.LimitsStore` from a rate store and a ledger store.

    ``admit`` checks the rates first; when they pass and a reservation is asked for, the
    ledger reserves it, and a refused reservation gives the rate units back, as does a ledger
    that fails or a cancelled admission: all or nothing, as the port requires (a concurrent
    admission may briefly see the units in between).

    Args:
        rates: keeps the rate-limit counters (e.g. :class:`MemoryLimitsStore`).
        ledger: keeps budgets and reservations (e.g. :class:`SqlLedgerStore`).
    """

    __slots__ = ("_ledger", "_rates")

    def __init__(self, rates: LimitsStore, ledger: LedgerStore) -> None:
        self._rates = rates
        self._ledger = ledger

    def __repr__(self) -> str:
        return f"SqlBackedLimitsStore(rates={self._rates!r}, ledger={self._ledger!r})"

    async def admit(self, rates: Sequence[RateOp], reserve: ReserveRequest | None) -> AdmitOutcome:
        """See :meth:`LimitsStore.admit`."""
        outcome = await self._rates.admit(rates, None)
        if not outcome.ok or reserve is None:
            return outcome
        try:
            reserved = await self._ledger.reserve(reserve)
        except BaseException:  # the ledger failed or the caller went away: no admission happened
            await self._give_back(rates)
            raise
        if reserved.ok:
            return AdmitOutcome(True, outcome.now_ms, outcome.rates, reserved)
        await self._give_back(rates)
        return AdmitOutcome(False, outcome.now_ms, outcome.rates, reserved)

    async def _give_back(self, rates: Sequence[RateOp]) -> None:
        undo = [RateAdjust(op.key, -op.cost, op.limit, op.period_ms) for op in rates if op.cost]
        if undo:
            await self._rates.settle_admission(undo, None, None)

    async def settle_admission(
        self, adjustments: Sequence[RateAdjust], reservation_id: str | None, actual_micros: int | None
    ) -> SettleOutcome | None:
        """See :meth:`LimitsStore.settle_admission`."""
        outcome = None
        if reservation_id is not None:
            outcome = await self._ledger.settle(reservation_id, actual_micros)
            if outcome.already_settled:
                return outcome
        if adjustments:
            await self._rates.settle_admission(adjustments, None, None)
        return outcome

    async def reset_rate(self, key: str) -> None:
        """See :meth:`LimitsStore.reset_rate`."""
        await self._rates.reset_rate(key)

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        """See :meth:`LedgerStore.reserve`."""
        return await self._ledger.reserve(request)

    async def settle(self, reservation_id: str, actual_micros: int | None) -> SettleOutcome:
        """See :meth:`LedgerStore.settle`."""
        return await self._ledger.settle(reservation_id, actual_micros)

    async def balance(self, account: str, period_start: int) -> LedgerBalance:
        """See :meth:`LedgerStore.balance`."""
        return await self._ledger.balance(account, period_start)

    async def delete_settled(self, before: datetime, *, limit: int = 1000) -> int:
        """See :meth:`SqlLedgerStore.delete_settled`; 0 when the ledger keeps no settled rows."""
        delete = getattr(self._ledger, "delete_settled", None)
        return 0 if delete is None else int(await delete(before, limit=limit))

    async def release_stale(self, created_before_ms: int, *, limit: int = 1000) -> int:
        """See :meth:`StaleReservationSweeper.release_stale`; 0 when the ledger cannot sweep."""
        if not isinstance(self._ledger, StaleReservationSweeper):
            return 0
        return await self._ledger.release_stale(created_before_ms, limit=limit)

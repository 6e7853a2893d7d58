"""The SQL budget ledger (:class:`~maaskit.storage.ports.limits.LedgerStore`) on SQLite or PostgreSQL.

Durable budgets: the counters of each (account, period) live in ``maaskit_budget_periods`` and
every reservation in ``maaskit_budget_reservations``, so commits and releases stay idempotent
across restarts.

Atomicity: a reservation is one transaction that makes sure each period row exists
(``INSERT ... ON CONFLICT DO NOTHING``) and then runs a conditional
``UPDATE ... SET reserved = reserved + :amount WHERE committed + reserved + :amount <= :limit``
per line (lines in a fixed order, so two multi-line reservations cannot deadlock). PostgreSQL
re-checks the ``WHERE`` clause on the newest row version after waiting for a row lock, so
concurrent reservations can never overshoot. Settling locks the reservation rows
(``SELECT ... FOR UPDATE`` on PostgreSQL, in account order) and flips them from ``open``
exactly once. :meth:`SqlLedgerStore.release_stale` expires reservations nobody settled (a
crashed replica's) the same way, one transaction per reservation, so a concurrent settle and
sweep of one reservation settle it exactly once.
SQLite serialises writers; within one process this store also serialises its own
transactions with an ``asyncio.Lock``, because an in-memory SQLite database shares one
connection between sessions.

Example::

    from maaskit.storage.sql import Database
    from maaskit.storage.sql.budget import SqlLedgerStore

    db = Database("sqlite+aiosqlite:///./maaskit.db")
    await db.migrate()
    store = SqlLedgerStore(db)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from maaskit.clock import Clock, SystemClock
from maaskit.errors import ConflictError, NotFoundError, UnavailableError
from maaskit.storage.ports.limits import (
    LedgerBalance,
    ReserveOutcome,
    ReserveRequest,
    SettlementStatus,
    SettleOutcome,
)
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.budget import BudgetPeriodRow, BudgetReservationRow

__all__ = ["SqlLedgerStore"]

_periods: sa.Table = BudgetPeriodRow.__table__  # type: ignore[attr-defined]
_reservations: sa.Table = BudgetReservationRow.__table__  # type: ignore[attr-defined]
_OPEN = "open"


class _SettledMeanwhile(Exception):
    """Another replica settled the reservation between this transaction's read and its update."""


class _Refused(Exception):
    def __init__(self, balances: tuple[LedgerBalance, ...]) -> None:
        super().__init__("refused")
        self.balances = balances


class _Raced(Exception):
    """A reservation changed under a sweep: the transaction is rolled back."""


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class SqlLedgerStore:
    """The SQL :class:`~maaskit.storage.ports.limits.LedgerStore`.

    Args:
        database: a migrated :class:`~maaskit.storage.sql.Database`.
        clock: time source for the ``created_at``/``settled_at``/``updated_at`` columns.
    """

    __slots__ = ("_clock", "_db", "_insert", "_lock")

    def __init__(self, database: Database, clock: Clock | None = None) -> None:
        self._db = database
        self._clock: Clock = clock or SystemClock()
        self._lock = asyncio.Lock() if database.dialect == "sqlite" else None
        self._insert: Any = postgresql.insert if database.dialect == "postgresql" else sqlite.insert

    def __repr__(self) -> str:
        return f"SqlLedgerStore({self._db!r})"

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            if self._lock is None:
                async with self._db.engine.begin() as conn:
                    yield conn
            else:
                async with self._lock, self._db.engine.begin() as conn:
                    yield conn
        except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise UnavailableError("database.unavailable") from exc

    async def _balances(
        self, conn: AsyncConnection, keys: list[tuple[str, datetime]]
    ) -> tuple[LedgerBalance, ...]:
        cols = (_periods.c.committed_micros, _periods.c.reserved_micros, _periods.c.overage_micros)
        out = []
        for account, start in keys:
            query = sa.select(*cols).where(_periods.c.account == account, _periods.c.period_start == start)
            row = (await conn.execute(query)).first()
            if row is None:
                out.append(LedgerBalance())
            else:
                out.append(LedgerBalance(int(row[0]), int(row[1]), int(row[2])))
        return tuple(out)

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        """Reserve on every line in one transaction, all or nothing (see the port)."""
        now = self._clock.now()
        amount = request.amount_micros
        keys = [(line.account, _ts(line.period_start)) for line in request.lines]
        order = sorted(range(len(keys)), key=lambda i: keys[i])
        try:
            async with self._transaction() as conn:
                for i in order:
                    account, start = keys[i]
                    await conn.execute(
                        self._insert(_periods)
                        .values(
                            account=account,
                            period_start=start,
                            committed_micros=0,
                            reserved_micros=0,
                            overage_micros=0,
                            updated_at=now,
                        )
                        .on_conflict_do_nothing(index_elements=["account", "period_start"])
                    )
                    result = await conn.execute(
                        sa.update(_periods)
                        .where(
                            _periods.c.account == account,
                            _periods.c.period_start == start,
                            _periods.c.committed_micros + _periods.c.reserved_micros + amount
                            <= request.lines[i].limit_micros,
                        )
                        .values(reserved_micros=_periods.c.reserved_micros + amount, updated_at=now)
                    )
                    if result.rowcount != 1:
                        raise _Refused(await self._balances(conn, keys))
                try:
                    await conn.execute(
                        sa.insert(_reservations),
                        [
                            {
                                "reservation_id": request.reservation_id,
                                "account": account,
                                "period_start": start,
                                "amount_micros": amount,
                                "status": _OPEN,
                                "committed_micros": 0,
                                "overage_micros": 0,
                                "created_at": now,
                                "settled_at": None,
                            }
                            for account, start in keys
                        ],
                    )
                except sa.exc.IntegrityError:
                    raise ConflictError(
                        "budget.reservation_mismatch", reservation_id=request.reservation_id
                    ) from None
                balances = await self._balances(conn, keys)
        except _Refused as refused:
            return ReserveOutcome(False, refused.balances)
        return ReserveOutcome(True, balances)

    async def settle(self, reservation_id: str, actual_micros: int | None) -> SettleOutcome:
        """Commit or release a reservation exactly once, in one transaction (see the port).

        PostgreSQL locks the reservation's rows first. SQLite has no row locks: two replicas can
        both read it open, and the second one's conditional update then changes nothing; its
        transaction is rolled back and the settlement read again (``already_settled``).
        """
        try:
            return await self._settle_once(reservation_id, actual_micros)
        except _SettledMeanwhile:
            return await self._settle_once(reservation_id, actual_micros)

    async def _settle_once(self, reservation_id: str, actual_micros: int | None) -> SettleOutcome:
        now = self._clock.now()
        async with self._transaction() as conn:
            query = sa.select(
                _reservations.c.account,
                _reservations.c.period_start,
                _reservations.c.amount_micros,
                _reservations.c.status,
                _reservations.c.committed_micros,
                _reservations.c.overage_micros,
            ).where(_reservations.c.reservation_id == reservation_id)
            # rows locked in account order, as release_stale does: the two never deadlock
            query = query.order_by(_reservations.c.account)
            if self._db.dialect == "postgresql":
                query = query.with_for_update()
            rows = (await conn.execute(query)).all()
            if not rows:
                raise NotFoundError("budget.reservation_not_found", reservation_id=reservation_id)
            first = rows[0]
            if first.status != _OPEN:
                return SettleOutcome(
                    reservation_id,
                    SettlementStatus(first.status),
                    int(first.committed_micros),
                    int(first.overage_micros),
                    True,
                )
            amount = int(first.amount_micros)
            if actual_micros is None:
                status, committed, overage = SettlementStatus.RELEASED, 0, 0
            else:
                status = SettlementStatus.COMMITTED
                committed = min(actual_micros, amount)
                overage = actual_micros - committed
            result = await conn.execute(
                sa.update(_reservations)
                .where(_reservations.c.reservation_id == reservation_id, _reservations.c.status == _OPEN)
                .values(
                    status=status.value, committed_micros=committed, overage_micros=overage, settled_at=now
                )
            )
            if result.rowcount == 0 and self._db.dialect != "postgresql":
                raise _SettledMeanwhile  # by another replica, after our read (rolls this back)
            if result.rowcount != len(rows):  # pragma: no cover - prevented by the row lock
                raise ConflictError("budget.reservation_mismatch", reservation_id=reservation_id)
            for row in rows:
                await conn.execute(
                    sa.update(_periods)
                    .where(_periods.c.account == row.account, _periods.c.period_start == row.period_start)
                    .values(
                        reserved_micros=_periods.c.reserved_micros - amount,
                        committed_micros=_periods.c.committed_micros + committed,
                        overage_micros=_periods.c.overage_micros + overage,
                        updated_at=now,
                    )
                )
        return SettleOutcome(reservation_id, status, committed, overage, False)

    async def balance(self, account: str, period_start: int) -> LedgerBalance:
        """The counters of one budget period (zeros when it has none)."""
        try:
            async with self._db.engine.connect() as conn:
                return (await self._balances(conn, [(account, _ts(period_start))]))[0]
        except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise UnavailableError("database.unavailable") from exc

    async def release_stale(self, created_before_ms: int, *, limit: int = 1000) -> int:
        """Expire at most *limit* open reservations created before the cutoff (epoch ms).

        Implements :class:`~maaskit.storage.ports.limits.StaleReservationSweeper`: the oldest
        candidates are listed first, then each is expired in its own transaction (rows locked
        in account order on PostgreSQL, a conditional ``UPDATE ... WHERE status = 'open'``
        everywhere), so a settle or another replica's sweep that got there first wins and
        nothing is ever given back twice. Returns how many this call expired.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        seconds, millis = divmod(int(created_before_ms), 1000)
        cutoff = datetime.fromtimestamp(seconds, UTC) + timedelta(milliseconds=millis)
        async with self._transaction() as conn:
            candidates = (
                await conn.execute(
                    sa.select(_reservations.c.reservation_id)
                    .where(_reservations.c.status == _OPEN, _reservations.c.created_at < cutoff)
                    .group_by(_reservations.c.reservation_id)
                    .order_by(sa.func.min(_reservations.c.created_at), _reservations.c.reservation_id)
                    .limit(limit)
                )
            ).all()
        released = 0
        for (reservation_id,) in candidates:
            if await self._expire(str(reservation_id), cutoff):
                released += 1
        return released

    async def _expire(self, reservation_id: str, cutoff: datetime) -> bool:
        """Expire one open reservation created before *cutoff*; ``False`` if it is no longer open."""
        now = self._clock.now()
        try:
            async with self._transaction() as conn:
                query = (
                    sa.select(
                        _reservations.c.account, _reservations.c.period_start, _reservations.c.amount_micros
                    )
                    .where(
                        _reservations.c.reservation_id == reservation_id,
                        _reservations.c.status == _OPEN,
                        _reservations.c.created_at < cutoff,
                    )
                    .order_by(_reservations.c.account)
                )
                if self._db.dialect == "postgresql":
                    query = query.with_for_update()
                rows = (await conn.execute(query)).all()
                if not rows:
                    return False  # settled (or expired by another replica) since it was listed
                result = await conn.execute(
                    sa.update(_reservations)
                    .where(_reservations.c.reservation_id == reservation_id, _reservations.c.status == _OPEN)
                    .values(
                        status=SettlementStatus.EXPIRED.value,
                        committed_micros=0,
                        overage_micros=0,
                        settled_at=now,
                    )
                )
                if result.rowcount != len(rows):
                    raise _Raced  # pragma: no cover - prevented by the row lock / SQLite's writer lock
                for row in rows:
                    await conn.execute(
                        sa.update(_periods)
                        .where(_periods.c.account == row.account, _periods.c.period_start == row.period_start)
                        .values(
                            reserved_micros=_periods.c.reserved_micros - int(row.amount_micros),
                            updated_at=now,
                        )
                    )
        except _Raced:  # pragma: no cover - rolled back, nothing released
            return False
        return True

    async def delete_settled(self, before: datetime, *, limit: int = 1000) -> int:
        """Delete at most *limit* reservations settled before *before* (their idempotency record:
        a later settle of one is ``budget.reservation_not_found``); returns how many rows went.

        Every request with a budget leaves one settled row per budget line, so
        :class:`~maaskit.services.budget.ReservationSweeper` calls this after each sweep, in
        batches (short transactions: SQLite holds its write lock for each).
        """
        async with self._transaction() as conn:
            ids = (
                sa.select(_reservations.c.reservation_id)
                .where(_reservations.c.status != _OPEN, _reservations.c.settled_at < before)
                .limit(limit)
                .scalar_subquery()
            )
            result = await conn.execute(
                sa.delete(_reservations).where(_reservations.c.reservation_id.in_(ids))
            )
        return int(result.rowcount)

"""Budgets in exact micro-dollars: reserve before the upstream call, commit after, release on failure.

The :class:`BudgetLedger` promise: **committed spend never exceeds the budget.** It holds
because

* :meth:`BudgetLedger.reserve` atomically refuses (``QuotaExceededError("budget.exceeded")``)
  unless ``committed + reserved + amount <= limit`` for the current period, and
* :meth:`BudgetLedger.commit` commits at most the reserved amount. The reservation is meant to be
  the *maximum* possible cost of the call (:meth:`PricingService.max_cost_micros
  <maaskit.services.pricing.PricingService.max_cost_micros>`), so an actual cost above it is a
  bug or a mis-priced model: the excess is **not** committed, it is recorded separately as
  ``overage_micros`` on the settlement and on the period's counters, and logged as a warning.

Settling is idempotent: a reservation is settled exactly once (commit or release); any later
settle call changes nothing and returns the first result with ``already_settled=True``.

A replica that crashes between reserve and settle leaves its reservation open. On the shared
backends (SQL, Redis) :class:`ReservationSweeper` gives such reservations back after a timeout
(status ``expired``, nothing committed); a later settle of one is a no-op that reports it as
already settled.

Budget periods (:class:`BudgetPeriod`) are calendar-correct: a time zone, a billing anchor
(day of month, clamped to the month's length: the 31st means the last day in February), DST
changes (a local day can be 23 or 25 hours long). A period's counters are keyed by its start,
so a reset happens exactly once, when the first request of the new period arrives, and a
reservation settles against the period it was made in (it remembers the period start).

Example::

    from maaskit.clock import SystemClock
    from maaskit.services.budget import BudgetPeriod, DefaultBudgetLedger, PeriodKind
    from maaskit.storage.memory.limits import MemoryLimitsStore

    ledger = DefaultBudgetLedger(MemoryLimitsStore(), SystemClock())
    monthly = BudgetPeriod(PeriodKind.MONTHLY, timezone="Europe/Berlin", anchor_day=31)
    r = await ledger.reserve("key_123", 20_000, limit_micros=5_000_000, period=monthly)
    await ledger.commit(r, 12_345)
"""

from __future__ import annotations

import asyncio
import calendar
import itertools
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import structlog

from maaskit._tasks import cancel_and_wait, positive_seconds
from maaskit.clock import Clock
from maaskit.errors import MaasError, QuotaExceededError, ValidationError
from maaskit.storage.ports.limits import (
    BudgetLine,
    LedgerStore,
    ReserveRequest,
    SettlementStatus,
    SettleOutcome,
    StaleReservationSweeper,
)

__all__ = [
    "MAX_BUDGET_MICROS",
    "NO_RESET",
    "BudgetBalance",
    "BudgetLedger",
    "BudgetPeriod",
    "DefaultBudgetLedger",
    "PeriodKind",
    "Reservation",
    "ReservationSweeper",
    "Settlement",
    "SettlementStatus",
    "new_reservation_id",
    "validate_account",
    "validate_micros",
]

log = structlog.get_logger(__name__)

#: The largest budget or amount accepted (2**53 - 1 micro-dollars, about 9 billion USD): every
#: backend, including Redis Lua numbers, stays exact below it.
MAX_BUDGET_MICROS: Final = 2**53 - 1
_MAX_ACCOUNT_LEN: Final = 256
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: A settled reservation: its status, the committed amount and any overage (see the module docs).
Settlement = SettleOutcome

_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def _reseed_ids() -> None:
    # a forked worker must not reuse its parent's prefix: reservation ids are shared in Redis/SQL
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(8).hex()
    _ID_COUNTER = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


def new_reservation_id() -> str:
    """A reservation id unique across processes: a random per-process prefix plus a counter."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


def validate_account(value: object, *, field: str = "account") -> str:
    """Check a budget account (or rate-limit subject): a non-empty string of at most 256 printable characters.

    Raises:
        ValidationError: ``budget.invalid``.
    """
    if not isinstance(value, str) or not value or len(value) > _MAX_ACCOUNT_LEN:
        raise ValidationError(
            "budget.invalid", field=field, reason="must be a non-empty name of <= 256 characters"
        )
    if not value.isprintable():
        raise ValidationError("budget.invalid", field=field, reason="must not contain control characters")
    return value


def validate_micros(value: object, *, field: str) -> int:
    """Check an amount in micro-dollars: an ``int`` (not ``bool``/``float``) in ``[0, MAX_BUDGET_MICROS]``.

    Raises:
        ValidationError: ``budget.invalid``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("budget.invalid", field=field, reason="micro-dollars must be an integer")
    if value < 0:
        raise ValidationError("budget.invalid", field=field, reason="must not be negative")
    if value > MAX_BUDGET_MICROS:
        raise ValidationError("budget.invalid", field=field, reason="too large")
    return value


class PeriodKind(StrEnum):
    """How often a budget resets."""

    NONE = "none"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"


def _zone(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("budget.invalid", field="timezone", reason="must be an IANA time zone name")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError("budget.invalid", field="timezone", reason="unknown time zone") from None
    return value


def _int_in(low: int, high: int, field: str) -> attrs._ValidatorType[int]:
    def check(_inst: object, _attr: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValidationError(
                "budget.invalid", field=field, reason=f"must be an integer in {low}..{high}"
            )

    return check


def _month_anchor(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _add_months(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


@attrs.frozen
class BudgetPeriod:
    """When a budget resets: never, or every day/week/month/year at local midnight in *timezone*.

    Attributes:
        kind: the reset frequency.
        timezone: IANA zone name; periods start at local midnight there (DST-aware).
        anchor_day: day of the month a monthly/yearly period starts (1-31; clamped to the
            month's length, so 31 means the last day of February, April, ...).
        anchor_month: month a yearly period starts (1-12).
        anchor_weekday: weekday a weekly period starts (0 = Monday ... 6 = Sunday).

    Raises:
        ValidationError: ``budget.invalid`` for an unknown zone or an out-of-range anchor.
    """

    kind: PeriodKind = attrs.field(default=PeriodKind.NONE, converter=PeriodKind)
    timezone: str = attrs.field(default="UTC", validator=lambda _i, _a, v: _zone(v))
    anchor_day: int = attrs.field(default=1, validator=_int_in(1, 31, "anchor_day"))
    anchor_month: int = attrs.field(default=1, validator=_int_in(1, 12, "anchor_month"))
    anchor_weekday: int = attrs.field(default=0, validator=_int_in(0, 6, "anchor_weekday"))
    _cache: list[tuple[float, float, int, int | None]] = attrs.field(
        factory=list, init=False, eq=False, repr=False, hash=False
    )

    def bounds(self, now: datetime) -> tuple[datetime, datetime | None]:
        """The period containing *now*: ``(start, end)`` as aware UTC datetimes, ``start <= now < end``.

        A budget that never resets has the start ``1970-01-01T00:00Z`` and no end.
        """
        if now.tzinfo is None:
            raise ValidationError("budget.invalid", field="now", reason="must be timezone-aware")
        if self.kind is PeriodKind.NONE:
            return _EPOCH, None
        zone = ZoneInfo(self.timezone)
        local = now.astimezone(zone)
        start_day, next_day = self._candidate(local.date())
        start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=zone)
        if start > now:
            start_day, next_day = self._candidate(start_day - timedelta(days=1))
            start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=zone)
        end = datetime(next_day.year, next_day.month, next_day.day, tzinfo=zone)
        return start.astimezone(UTC), end.astimezone(UTC)

    def _candidate(self, day: date) -> tuple[date, date]:
        """The local start date of the period containing local date *day*, and the next one's."""
        kind = self.kind
        if kind is PeriodKind.DAILY:
            return day, day + timedelta(days=1)
        if kind is PeriodKind.WEEKLY:
            start = day - timedelta(days=(day.weekday() - self.anchor_weekday) % 7)
            return start, start + timedelta(days=7)
        if kind is PeriodKind.MONTHLY:
            start = _month_anchor(day.year, day.month, self.anchor_day)
            if start > day:
                start = _month_anchor(*_add_months(day.year, day.month, -1), self.anchor_day)
            nxt = _month_anchor(*_add_months(start.year, start.month, 1), self.anchor_day)
            return start, nxt
        # yearly
        start = _month_anchor(day.year, self.anchor_month, self.anchor_day)
        if start > day:
            start = _month_anchor(day.year - 1, self.anchor_month, self.anchor_day)
        return start, _month_anchor(start.year + 1, self.anchor_month, self.anchor_day)

    def bounds_ts(self, now_ts: float) -> tuple[int, int | None]:
        """:meth:`bounds` as integer epoch seconds for a time in epoch seconds (cached per period)."""
        cache = self._cache
        if cache:
            lo, hi, start, end = cache[0]
            if lo <= now_ts < hi:
                return start, end
        if self.kind is PeriodKind.NONE:
            cache[:] = [(float("-inf"), float("inf"), 0, None)]
            return 0, None
        start_dt, end_dt = self.bounds(datetime.fromtimestamp(now_ts, UTC))
        assert end_dt is not None
        start_f, end_f = start_dt.timestamp(), end_dt.timestamp()
        cache[:] = [(start_f, end_f, int(start_f), int(end_f))]
        return int(start_f), int(end_f)


#: A budget that never resets.
NO_RESET: Final = BudgetPeriod()


@attrs.frozen
class Reservation:
    """Budget held for one call until it is committed or released.

    Attributes:
        id: unique reservation id (settling twice with it is a no-op).
        account: the budget's account.
        amount_micros: the reserved amount (the call's maximum cost).
        limit_micros: the budget limit in force when reserving.
        period_start: start of the period the reservation belongs to (it settles there).
        period_end: end of that period, ``None`` for a budget that never resets.
    """

    id: str
    account: str
    amount_micros: int
    limit_micros: int
    period_start: datetime
    period_end: datetime | None


@attrs.frozen
class BudgetBalance:
    """The state of one budget in one period, in micro-dollars.

    Attributes:
        account: the budget's account.
        limit_micros: the budget limit.
        committed_micros: spend committed in the period.
        reserved_micros: held by open reservations.
        overage_micros: actual cost above reservations (never committed; see the module docs).
        period_start: the period's start.
        period_end: its end (``None``: never resets).
    """

    account: str
    limit_micros: int
    committed_micros: int
    reserved_micros: int
    overage_micros: int
    period_start: datetime
    period_end: datetime | None

    @property
    def available_micros(self) -> int:
        """What can still be reserved: ``limit - committed - reserved`` (never negative)."""
        return max(0, self.limit_micros - self.committed_micros - self.reserved_micros)


def _dt(ts: int | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def budget_exceeded(
    account: str, requested: int, committed: int, reserved: int, limit: int, end: int | None, now_ts: float
) -> QuotaExceededError:
    """The ``budget.exceeded`` error for a refused reservation (``retry_after``: seconds to the reset)."""
    return QuotaExceededError(
        "budget.exceeded",
        account=account,
        requested_micros=requested,
        available_micros=max(0, limit - committed - reserved),
        limit_micros=limit,
        retry_after=None if end is None else max(0.0, round(end - now_ts, 3)),
    )


def log_overage(outcome: SettleOutcome) -> None:
    """Warn about an actual cost above its reservation (it is recorded, not committed)."""
    if outcome.overage_micros and not outcome.already_settled:
        log.warning(
            "budget.overage",
            reservation_id=outcome.reservation_id,
            overage_micros=outcome.overage_micros,
        )


@runtime_checkable
class BudgetLedger(Protocol):
    """Reserve, commit and release budget atomically; committed spend never exceeds the limit."""

    async def reserve(
        self, account: str, amount_micros: int, limit_micros: int, period: BudgetPeriod = NO_RESET
    ) -> Reservation:
        """Hold *amount_micros* of *account*'s budget for the current period.

        Raises:
            QuotaExceededError: ``budget.exceeded`` if ``committed + reserved + amount > limit``.
            ValidationError: ``budget.invalid`` for a bad account or amount.
        """
        ...

    async def commit(self, reservation: Reservation, actual_micros: int) -> Settlement:
        """Commit the actual cost (at most the reserved amount; the rest is overage). Idempotent."""
        ...

    async def release(self, reservation: Reservation) -> Settlement:
        """Give the reservation back unspent (the call failed). Idempotent."""
        ...

    async def balance(
        self, account: str, limit_micros: int, period: BudgetPeriod = NO_RESET
    ) -> BudgetBalance:
        """The current period's counters for *account*."""
        ...


class DefaultBudgetLedger:
    """The :class:`BudgetLedger` over a :class:`~maaskit.storage.ports.limits.LedgerStore`.

    Args:
        store: the backend (memory, SQL or Redis).
        clock: the time source that decides the current period.
    """

    __slots__ = ("_clock", "_store")

    def __init__(self, store: LedgerStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def __repr__(self) -> str:
        return f"DefaultBudgetLedger({type(self._store).__name__})"

    async def reserve(
        self, account: str, amount_micros: int, limit_micros: int, period: BudgetPeriod = NO_RESET
    ) -> Reservation:
        """Hold budget; see :meth:`BudgetLedger.reserve`."""
        validate_account(account)
        validate_micros(amount_micros, field="amount_micros")
        validate_micros(limit_micros, field="limit_micros")
        if not isinstance(period, BudgetPeriod):
            raise ValidationError("budget.invalid", field="period", reason="must be a BudgetPeriod")
        now_ts = self._clock.time()
        start, end = period.bounds_ts(now_ts)
        rid = new_reservation_id()
        line = BudgetLine(account, start, end, limit_micros)
        outcome = await self._store.reserve(ReserveRequest(rid, amount_micros, (line,)))
        if not outcome.ok:
            bal = outcome.balances[0]
            raise budget_exceeded(
                account, amount_micros, bal.committed_micros, bal.reserved_micros, limit_micros, end, now_ts
            )
        return Reservation(
            rid, account, amount_micros, limit_micros, _EPOCH + timedelta(seconds=start), _dt(end)
        )

    async def commit(self, reservation: Reservation, actual_micros: int) -> Settlement:
        """Commit the actual cost; see :meth:`BudgetLedger.commit`."""
        validate_micros(actual_micros, field="actual_micros")
        outcome = await self._store.settle(reservation.id, actual_micros)
        log_overage(outcome)
        return outcome

    async def release(self, reservation: Reservation) -> Settlement:
        """Release the reservation; see :meth:`BudgetLedger.release`."""
        return await self._store.settle(reservation.id, None)

    async def balance(
        self, account: str, limit_micros: int, period: BudgetPeriod = NO_RESET
    ) -> BudgetBalance:
        """The current period's counters; see :meth:`BudgetLedger.balance`."""
        validate_account(account)
        validate_micros(limit_micros, field="limit_micros")
        start, end = period.bounds_ts(self._clock.time())
        bal = await self._store.balance(account, start)
        return BudgetBalance(
            account,
            limit_micros,
            bal.committed_micros,
            bal.reserved_micros,
            bal.overage_micros,
            _EPOCH + timedelta(seconds=start),
            _dt(end),
        )


class ReservationSweeper:
    """Gives back budget reservations nobody settled in time (a crashed replica's), periodically.

    Every *interval* seconds it asks the store to release the open reservations created more than
    *timeout* seconds ago (:class:`~maaskit.storage.ports.limits.StaleReservationSweeper`), batch
    after batch while a batch comes back full, and logs how many it released. Each release is
    atomic in the store and loses against a concurrent settle, so several replicas may sweep at
    once. A store without ``release_stale`` (the in-process memory store: its reservations die
    with it) is skipped: :meth:`start` then starts nothing.

    Choose *timeout* above the longest a request can take (upstream timeout, retries, a long
    stream): a request settling after its reservation expired is not charged (its settle reports
    ``already_settled`` with status ``expired``).

    Args:
        store: the budget ledger store (SQL, Redis, or the SQL-backed limits store).
        clock: the time source for the cutoff.
        timeout: seconds after which an open reservation counts as abandoned (> 0).
        interval: seconds between sweeps (> 0); the first sweep runs one interval after start.
        batch_size: reservations released per store call (>= 1).
        sleep: the coroutine function that waits between sweeps (inject one in tests).

    Raises:
        ValidationError: ``config.invalid`` for a non-positive timeout, interval or batch size.
    """

    __slots__ = ("_batch_size", "_clock", "_interval", "_sleep", "_store", "_task", "_timeout")

    #: Batches one :meth:`sweep` releases at most; the rest waits for the next round.
    max_batches: int = 100

    def __init__(
        self,
        store: LedgerStore,
        clock: Clock,
        *,
        timeout: float = 3600.0,
        interval: float = 60.0,
        batch_size: int = 1000,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not positive_seconds(timeout):
            raise ValidationError("config.invalid", setting="reservation_timeout", reason=_CFG_TIMEOUT)
        if not positive_seconds(interval):
            raise ValidationError(
                "config.invalid", setting="reservation_sweep_interval", reason=_CFG_INTERVAL
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationError("config.invalid", setting="reservation_sweep_batch", reason=_CFG_BATCH)
        self._store = store
        self._clock = clock
        self._timeout = float(timeout)
        self._interval = float(interval)
        self._batch_size = batch_size
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"ReservationSweeper({type(self._store).__name__}, timeout={self._timeout}, "
            f"interval={self._interval})"
        )

    @property
    def supported(self) -> bool:
        """Whether the store can release stale reservations (else the sweeper does nothing)."""
        return isinstance(self._store, StaleReservationSweeper)

    @property
    def running(self) -> bool:
        """Whether the background loop runs."""
        return self._task is not None and not self._task.done()

    async def sweep(self) -> int:
        """Release every reservation older than the timeout now; returns how many were released.

        Errors of the store propagate (the background loop logs them and tries again later).
        """
        store = self._store
        if not isinstance(store, StaleReservationSweeper):
            return 0
        cutoff_ms = int((self._clock.time() - self._timeout) * 1000)
        total = 0
        for _ in range(self.max_batches):
            released = await store.release_stale(cutoff_ms, limit=self._batch_size)
            total += released
            if released < self._batch_size:
                break
        if total:
            log.warning("budget.reservations_expired", released=total, timeout=self._timeout)
        await self._prune()
        return total

    async def _prune(self) -> None:
        """Delete settled reservations older than the timeout (SQL keeps a row per budget line
        and request; Redis lets them expire): their idempotency records are not needed longer."""
        delete = getattr(self._store, "delete_settled", None)
        if delete is None:
            return
        before = self._clock.now() - timedelta(seconds=self._timeout)
        deleted = 0
        for _ in range(self.max_batches):
            count = int(await delete(before, limit=self._batch_size))
            deleted += count
            if count < self._batch_size:
                break
        if deleted:
            log.debug("budget.settled_reservations_deleted", deleted=deleted)

    async def start(self) -> None:
        """Start the sweep loop (idempotent); nothing for a store that cannot sweep."""
        if self.running:
            return
        if not self.supported:
            log.debug("budget.sweeper_skipped", store=type(self._store).__name__)
            return
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="maaskit-reservation-sweeper")

    async def _loop(self) -> None:
        while True:
            await self._sleep(self._interval)
            try:
                await self.sweep()
            except MaasError as exc:  # the store is unavailable: try again next round
                log.warning("budget.sweep_failed", error=exc.code)
            except Exception as exc:  # never let one bad round stop the sweeps
                log.warning("budget.sweep_failed", error=type(exc).__name__)

    async def aclose(self) -> None:
        """Stop the loop (idempotent); a sweep in progress is cancelled (its transaction rolls back)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)


_CFG_TIMEOUT = "MAASKIT_RESERVATION_TIMEOUT must be a positive number of seconds"
_CFG_INTERVAL = "MAASKIT_RESERVATION_SWEEP_INTERVAL must be a positive number of seconds"
_CFG_BATCH = "the reservation sweep batch size must be a positive integer"

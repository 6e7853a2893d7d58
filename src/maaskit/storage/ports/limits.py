"""Store Protocols behind rate limits, budgets and the combined admission gate.

The services in :mod:`maaskit.services.rate_limit` and :mod:`maaskit.services.budget` never
touch a backend directly: they call one of these ports.

* :class:`LedgerStore` - budget counters and reservations (memory, SQL, Redis).
* :class:`LimitsStore` - a :class:`LedgerStore` that also keeps rate-limit state and can check
  several rate limits **and** reserve budget in one atomic, all-or-nothing step
  (:meth:`LimitsStore.admit`) and settle it in another (:meth:`LimitsStore.settle_admission`).
  The Redis backend does each in exactly one round trip (one Lua script); memory does it
  without yielding to the event loop.

Rate limits use GCRA (the generic cell rate algorithm, equivalent to a token bucket) on
integers, so memory and Redis compute exactly the same thing. A limit of ``limit`` units per
``period_ms`` milliseconds is a bucket of capacity ``limit * period_ms`` that drains ``limit``
per millisecond; a unit of cost fills it by ``period_ms``. The state per subject is two
integers (``level``, ``ts``): O(1) in time and space whatever the limit. See
:func:`gcra_drain`.

The records exchanged with stores are ``NamedTuple``s rather than attrs classes: they are
created several times per request on the hot path, and a named tuple is built about three
times faster while staying immutable and typed.

Budget periods are identified by their start as integer epoch seconds (``0`` for a budget that
never resets); computing the calendar is the service's job.

* :class:`StaleReservationSweeper` - a ledger that can release reservations nobody settled
  (their replica crashed between reserve and settle). Shared backends (SQL, Redis) implement
  it; an in-process store dies with its process and does not need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Final, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "MAX_LIMIT_UNITS",
    "AdmitOutcome",
    "BudgetLine",
    "LedgerBalance",
    "LedgerStore",
    "LimitsStore",
    "RateAdjust",
    "RateOp",
    "RateOutcome",
    "ReserveOutcome",
    "ReserveRequest",
    "SettleOutcome",
    "SettlementStatus",
    "StaleReservationSweeper",
    "gcra_adjust",
    "gcra_drain",
]

#: ``limit * period_ms`` must stay below this so that every GCRA number (including a debt of one
#: extra window after an under-estimate) is exact in a Redis Lua double (2**53).
MAX_LIMIT_UNITS: Final = 2**51


class SettlementStatus(StrEnum):
    """How a reservation ended."""

    COMMITTED = "committed"
    RELEASED = "released"
    #: Released by :meth:`StaleReservationSweeper.release_stale`: never settled in time (its
    #: process probably crashed); nothing was committed.
    EXPIRED = "expired"


class RateOp(NamedTuple):
    """One rate-limit check inside an admission.

    Attributes:
        key: the store key of the subject's counter (kind and subject, without backend prefix).
        cost: units this request takes (1 for requests, the token estimate for tokens).
        limit: units per period.
        period_ms: the period in milliseconds.
    """

    key: str
    cost: int
    limit: int
    period_ms: int


class RateAdjust(NamedTuple):
    """A correction of a rate counter after the call (actual tokens minus the estimate)."""

    key: str
    delta: int
    limit: int
    period_ms: int


class RateOutcome(NamedTuple):
    """The GCRA state of one subject after an admission attempt.

    Attributes:
        allowed: whether this check alone passes (the admission is applied only if all pass).
        level: the bucket level: after this request when the whole admission was applied,
            else the current level (nothing was counted).
        now_ms: the time the store used, in epoch milliseconds.
    """

    allowed: bool
    level: int
    now_ms: int


class BudgetLine(NamedTuple):
    """One budget a reservation draws on.

    Attributes:
        account: the budget's account (a key id, team id, ...).
        period_start: the budget period's start, epoch seconds (``0`` when it never resets).
        period_end: the period's end, epoch seconds, or ``None`` (stores may expire counters after it).
        limit_micros: the budget for the period.
    """

    account: str
    period_start: int
    period_end: int | None
    limit_micros: int


class ReserveRequest(NamedTuple):
    """Reserve ``amount_micros`` on every line, all or nothing, under ``reservation_id``."""

    reservation_id: str
    amount_micros: int
    lines: tuple[BudgetLine, ...]


class LedgerBalance(NamedTuple):
    """The counters of one budget period, in micro-dollars."""

    committed_micros: int = 0
    reserved_micros: int = 0
    overage_micros: int = 0


class ReserveOutcome(NamedTuple):
    """Whether a reservation was made, and each line's balance (after it, or at the refusal)."""

    ok: bool
    balances: tuple[LedgerBalance, ...]


class AdmitOutcome(NamedTuple):
    """The result of :meth:`LimitsStore.admit`: nothing was written unless ``ok``."""

    ok: bool
    now_ms: int
    rates: tuple[RateOutcome, ...]
    reserve: ReserveOutcome | None


class SettleOutcome(NamedTuple):
    """How a reservation was settled; ``already_settled`` when an earlier call settled it."""

    reservation_id: str
    status: SettlementStatus
    committed_micros: int
    overage_micros: int
    already_settled: bool


def gcra_drain(level: int, ts: int, now: int, limit: int) -> tuple[int, int]:
    """The bucket *level* stored at *ts*, drained to *now* (ms); returns ``(level, now)``.

    Time never runs backwards for a counter: when *now* is before *ts* (clock skew between
    replicas) the stored time is kept.
    """
    if now <= ts:
        return level, ts
    level -= (now - ts) * limit
    return (level if level > 0 else 0), now


def gcra_adjust(level: int, delta: int, limit: int, period_ms: int) -> int:
    """A drained *level* corrected by *delta* units, clamped to ``[0, 2 * capacity]``.

    A positive *delta* (more tokens used than estimated) is debt that delays the next
    admissions; it is capped at one extra window. A negative one gives units back.
    """
    level += delta * period_ms
    cap = 2 * limit * period_ms
    if level < 0:
        return 0
    return cap if level > cap else level


@runtime_checkable
class LedgerStore(Protocol):
    """Budget counters per (account, period) and reservations, atomically.

    Contract (checked by ``tests/contract/test_limits_contract.py`` for every backend):

    * :meth:`reserve` adds ``amount`` to every line's ``reserved`` only if, on **every** line,
      ``committed + reserved + amount <= limit``; otherwise nothing changes.
    * :meth:`settle` settles a reservation exactly once: ``reserved -= amount`` and, when
      committing, ``committed += min(actual, amount)`` and ``overage += max(0, actual - amount)``.
      A second call changes nothing and returns the first outcome with ``already_settled``.

    Shared backends also implement :class:`StaleReservationSweeper` (a separate Protocol, so an
    in-process store that cannot outlive its reservations need not).
    """

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        """Reserve on every line of *request*, all or nothing.

        Raises:
            ConflictError: ``budget.reservation_mismatch`` when the reservation id is taken.
        """
        ...

    async def settle(self, reservation_id: str, actual_micros: int | None) -> SettleOutcome:
        """Commit *actual_micros* (``None``: release) against the reservation; idempotent.

        Raises:
            NotFoundError: ``budget.reservation_not_found`` for an unknown (or expired) id.
        """
        ...

    async def balance(self, account: str, period_start: int) -> LedgerBalance:
        """The counters of *account* in the period starting at *period_start* (zeros if none)."""
        ...


@runtime_checkable
class StaleReservationSweeper(Protocol):
    """A ledger that can release open reservations nobody settled in time.

    A replica that crashes between reserve and settle leaves its reservation open, and its amount
    would stay ``reserved`` (blocking that budget) forever. The SQL and Redis ledgers implement
    this Protocol; :class:`~maaskit.services.budget.ReservationSweeper` calls it periodically.

    Contract (``tests/contract/test_stale_reservations.py``):

    * only reservations still **open** and created strictly before the cutoff are released, at
      most *limit* of them (oldest first);
    * each one atomically: ``reserved -= amount`` on every budget line it holds, and its status
      becomes :attr:`SettlementStatus.EXPIRED` (nothing committed);
    * it never races a concurrent :meth:`LedgerStore.settle` (or another sweep) into releasing
      twice: whichever comes first settles, a later settle returns the ``expired`` outcome with
      ``already_settled`` and changes nothing.
    """

    async def release_stale(self, created_before_ms: int, *, limit: int = 1000) -> int:
        """Release at most *limit* open reservations created before *created_before_ms*.

        Args:
            created_before_ms: the cutoff, epoch milliseconds (exclusive).
            limit: the most reservations released by this call (> 0).

        Returns:
            How many reservations this call released (``limit`` means there may be more).
        """
        ...


@runtime_checkable
class LimitsStore(LedgerStore, Protocol):
    """A :class:`LedgerStore` that also keeps GCRA rate-limit state, for one-step admission."""

    async def admit(self, rates: Sequence[RateOp], reserve: ReserveRequest | None) -> AdmitOutcome:
        """Check every rate op and the reservation; apply all of them only if all pass."""
        ...

    async def settle_admission(
        self,
        adjustments: Sequence[RateAdjust],
        reservation_id: str | None,
        actual_micros: int | None,
    ) -> SettleOutcome | None:
        """Apply rate corrections and settle the reservation (if any) in one step.

        With a reservation, the rate corrections are applied only by the call that settles it,
        so a retried settle never corrects twice. Without one they are always applied.

        Raises:
            NotFoundError: ``budget.reservation_not_found`` for an unknown reservation id.
        """
        ...

    async def reset_rate(self, key: str) -> None:
        """Forget the rate-limit state of *key* (an administrator action)."""
        ...

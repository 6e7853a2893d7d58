"""Rate limits (requests and tokens per minute) and the one-step admission gate.

Algorithm: GCRA (generic cell rate algorithm; the integer form of a token bucket). A limit of
``L`` units per ``P`` seconds is a bucket of ``L`` units that refills continuously at ``L/P``
per second, measured in whole milliseconds. Its state is two integers per subject, whatever
``L`` is, and memory and Redis compute bit-for-bit the same thing.

**Guarantee** (checked by ``tests/property/test_rate_limit_props.py``): in any time interval of
``w`` milliseconds the admitted units are at most ``L + w * L / (P * 1000)`` - a burst of ``L``
plus the refill during the interval. In particular never more than ``L`` at one instant, and
at most ``2 L`` in any window of ``P`` seconds; over long intervals the rate converges to ``L/P``.
A refused request's ``retry_after`` is exact (rounded up to the millisecond): after waiting
it, the same request is admitted if nothing else was admitted meanwhile.

Tokens are admitted with an estimate (``cost``) and corrected after the call with
:meth:`RateLimiter.adjust` (``actual - estimate``): an over-estimate is given back, an
under-estimate becomes debt (capped at one extra window) that delays later requests.

The :class:`LimitsGate` does the whole admission (any number of request and token limits plus
budget reservations on several accounts) as **one** atomic all-or-nothing step: exactly one
Redis round trip to admit and at most one to settle. If a budget refuses, no rate-limit slot
is consumed, and vice versa.

Example::

    from maaskit.clock import SystemClock
    from maaskit.services.rate_limit import AdmissionLimits, DefaultLimitsGate
    from maaskit.storage.memory.limits import MemoryLimitsStore

    gate = DefaultLimitsGate(MemoryLimitsStore(), SystemClock())
    decision = await gate.acquire(AdmissionLimits.simple(
        "key_123", rpm=60, tpm=10_000, estimated_tokens=1_200,
        budget_account="key_123", budget_limit_micros=5_000_000, reserve_micros=900,
    ))
    decision.raise_if_refused()        # RateLimitedError / QuotaExceededError
    ...                                # call the upstream
    await gate.settle(decision.ticket, actual_tokens=950, actual_micros=610)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from maaskit.clock import Clock
from maaskit.errors import MaasError, RateLimitedError, ValidationError
from maaskit.services.budget import (
    MAX_BUDGET_MICROS,
    NO_RESET,
    BudgetPeriod,
    PeriodKind,
    Settlement,
    budget_exceeded,
    log_overage,
    new_reservation_id,
    validate_account,
    validate_micros,
)
from maaskit.storage.ports.limits import (
    MAX_LIMIT_UNITS,
    BudgetLine,
    LedgerBalance,
    LimitsStore,
    RateAdjust,
    RateOp,
    ReserveRequest,
    SettleOutcome,
)

__all__ = [
    "AdmissionLimits",
    "AdmissionPlan",
    "BudgetCheck",
    "DefaultLimitsGate",
    "DefaultRateLimiter",
    "GateDecision",
    "GateTicket",
    "LimitsGate",
    "RateCheck",
    "RateKind",
    "RateLimit",
    "RateLimitDecision",
    "RateLimiter",
    "format_reset",
]

_MAX_COST: Final = 2**40


class RateKind(StrEnum):
    """What a rate limit counts; it names the counter and the ``x-ratelimit-*-<kind>`` headers."""

    REQUESTS = "requests"
    TOKENS = "tokens"


def _positive(field: str, maximum: int) -> attrs._ValidatorType[int]:
    def check(_inst: object, _attr: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            raise ValidationError(
                "rate_limit.invalid", field=field, reason=f"must be an integer in 1..{maximum}"
            )

    return check


@attrs.frozen
class RateLimit:
    """``limit`` units (requests or tokens) per ``period_seconds``.

    Raises:
        ValidationError: ``rate_limit.invalid`` for a non-positive or oversized limit or period
            (``limit * period`` in milliseconds must stay below 2**51).
    """

    limit: int = attrs.field(validator=_positive("limit", 2**40))
    period_seconds: int = attrs.field(default=60, validator=_positive("period_seconds", 366 * 86400))
    kind: RateKind = attrs.field(default=RateKind.REQUESTS, converter=RateKind)

    def __attrs_post_init__(self) -> None:
        if self.limit * self.period_seconds * 1000 >= MAX_LIMIT_UNITS:
            raise ValidationError("rate_limit.invalid", field="limit", reason="limit * period is too large")

    @property
    def period_ms(self) -> int:
        """The period in milliseconds."""
        return self.period_seconds * 1000

    @classmethod
    def per_minute(cls, limit: int, kind: RateKind | str = RateKind.REQUESTS) -> RateLimit:
        """``limit`` per minute."""
        return cls(limit, 60, RateKind(kind))


_LIMIT_HEADER: Final = {kind.value: f"x-ratelimit-limit-{kind.value}" for kind in RateKind}
_REMAINING_HEADER: Final = {kind.value: f"x-ratelimit-remaining-{kind.value}" for kind in RateKind}
_RESET_HEADER: Final = {kind.value: f"x-ratelimit-reset-{kind.value}" for kind in RateKind}


def format_reset(ms: int) -> str:
    """A duration in OpenAI's ``x-ratelimit-reset-*`` style: ``"20ms"``, ``"1.5s"``, ``"6m0s"``."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{rest:g}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes}m{rest:g}s"


@attrs.frozen
class RateLimitDecision:
    """The outcome of one rate-limit check: what the ``x-ratelimit-*`` headers need.

    Attributes:
        allowed: whether the request was admitted (and counted).
        kind: requests or tokens.
        limit: units per period.
        period_seconds: the period.
        remaining: whole units still available now (after this request, when admitted).
        reset_after_ms: milliseconds until the bucket is full again (OpenAI's "reset").
        retry_after_ms: when refused, milliseconds until this request would be admitted;
            ``None`` when admitted or when it can never be (cost above the limit).
        at_ms: the time of the decision, epoch milliseconds.
        cost: the units this request asked for.
    """

    allowed: bool
    kind: RateKind
    limit: int
    period_seconds: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int | None
    at_ms: int
    cost: int

    @property
    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        return self.reset_after_ms / 1000

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before retrying (refused requests only)."""
        return None if self.retry_after_ms is None else self.retry_after_ms / 1000

    @property
    def reset_at(self) -> datetime:
        """When the bucket is full again (aware UTC)."""
        return datetime.fromtimestamp((self.at_ms + self.reset_after_ms) / 1000, UTC)

    @property
    def too_large(self) -> bool:
        """True when the cost exceeds the limit itself: the request can never be admitted."""
        return self.cost > self.limit

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-limit-<kind>``, ``x-ratelimit-remaining-<kind>``, ``x-ratelimit-reset-<kind>``."""
        kind = self.kind.value
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(self.remaining),
            f"x-ratelimit-reset-{kind}": format_reset(self.reset_after_ms),
        }

    def error(self) -> RateLimitedError:
        """The :class:`~maaskit.errors.RateLimitedError` for this refusal."""
        if self.too_large:
            return RateLimitedError(
                "rate_limit.request_too_large",
                kind=self.kind.value,
                requested=self.cost,
                limit=self.limit,
                period_seconds=self.period_seconds,
            )
        return RateLimitedError(
            "rate_limit.exceeded",
            kind=self.kind.value,
            limit=self.limit,
            period_seconds=self.period_seconds,
            retry_after=self.retry_after,
        )


def _window(limit: RateLimit, level: int) -> tuple[int, int]:
    """``(remaining units, ms until the window is full again)`` of a GCRA bucket at *level*."""
    period_ms = limit.period_seconds * 1000
    free = limit.limit * period_ms - level
    return (free // period_ms if free > 0 else 0), -(-level // limit.limit)


def _decide(limit: RateLimit, cost: int, allowed: bool, level: int, now_ms: int) -> RateLimitDecision:
    period_ms = limit.period_seconds * 1000
    units = limit.limit
    remaining, reset_after = _window(limit, level)
    retry: int | None = None
    if not allowed and cost <= units:
        retry = -(-(level + cost * period_ms - units * period_ms) // units)
    return RateLimitDecision(
        allowed, limit.kind, units, limit.period_seconds, remaining, reset_after, retry, now_ms, cost
    )


def _check_cost(cost: object) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int) or not 0 <= cost <= _MAX_COST:
        raise ValidationError("rate_limit.invalid", field="cost", reason="must be an integer >= 0")
    return cost


def _key(kind: RateKind, subject: str) -> str:
    return f"{kind.value}:{subject}"


@runtime_checkable
class RateLimiter(Protocol):
    """Requests/tokens per period per subject (a key id, user, team or model name)."""

    async def hit(self, subject: str, limit: RateLimit, cost: int = 1) -> RateLimitDecision:
        """Count *cost* units for *subject* if the limit allows; never raises for a refusal."""
        ...

    async def require(self, subject: str, limit: RateLimit, cost: int = 1) -> RateLimitDecision:
        """Like :meth:`hit`, but raise ``RateLimitedError`` (``rate_limit.exceeded`` with
        ``retry_after``, or ``rate_limit.request_too_large``) when refused."""
        ...

    async def adjust(self, subject: str, limit: RateLimit, delta: int) -> None:
        """Correct the count after the call: ``delta = actual - estimate`` (may be negative)."""
        ...

    async def reset(self, subject: str, kind: RateKind = RateKind.REQUESTS) -> None:
        """Forget *subject*'s state for *kind* (the next request starts with a full bucket)."""
        ...


class DefaultRateLimiter:
    """The :class:`RateLimiter` over a :class:`~maaskit.storage.ports.limits.LimitsStore`.

    Args:
        store: memory (:class:`~maaskit.storage.memory.limits.MemoryLimitsStore`) or Redis.
    """

    __slots__ = ("_store",)

    def __init__(self, store: LimitsStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"DefaultRateLimiter({type(self._store).__name__})"

    async def hit(self, subject: str, limit: RateLimit, cost: int = 1) -> RateLimitDecision:
        """See :meth:`RateLimiter.hit`."""
        validate_account(subject, field="subject")
        _check_cost(cost)
        op = RateOp(_key(limit.kind, subject), cost, limit.limit, limit.period_ms)
        outcome = await self._store.admit((op,), None)
        rate = outcome.rates[0]
        return _decide(limit, cost, rate.allowed, rate.level, rate.now_ms)

    async def require(self, subject: str, limit: RateLimit, cost: int = 1) -> RateLimitDecision:
        """See :meth:`RateLimiter.require`."""
        decision = await self.hit(subject, limit, cost)
        if not decision.allowed:
            raise decision.error()
        return decision

    async def adjust(self, subject: str, limit: RateLimit, delta: int) -> None:
        """See :meth:`RateLimiter.adjust`."""
        validate_account(subject, field="subject")
        if isinstance(delta, bool) or not isinstance(delta, int) or abs(delta) > _MAX_COST:
            raise ValidationError("rate_limit.invalid", field="delta", reason="must be an integer")
        adj = RateAdjust(_key(limit.kind, subject), delta, limit.limit, limit.period_ms)
        await self._store.settle_admission((adj,), None, None)

    async def reset(self, subject: str, kind: RateKind = RateKind.REQUESTS) -> None:
        """See :meth:`RateLimiter.reset`."""
        validate_account(subject, field="subject")
        await self._store.reset_rate(_key(RateKind(kind), subject))


# --------------------------------------------------------------------------------------------
# The combined admission gate
# --------------------------------------------------------------------------------------------


@attrs.frozen
class RateCheck:
    """One rate limit to check in an admission: *cost* units of *limit* for *subject*.

    For a tokens limit *cost* is the estimate; :meth:`LimitsGate.settle` corrects it.
    """

    subject: str = attrs.field(validator=lambda _i, _a, v: validate_account(v, field="subject"))
    limit: RateLimit
    cost: int = attrs.field(default=1, validator=lambda _i, _a, v: _check_cost(v))


@attrs.frozen
class BudgetCheck:
    """One budget an admission reserves on: *account* with *limit_micros* per *period*."""

    account: str = attrs.field(validator=lambda _i, _a, v: validate_account(v))
    limit_micros: int = attrs.field(validator=lambda _i, _a, v: validate_micros(v, field="limit_micros"))
    period: BudgetPeriod = NO_RESET


@attrs.frozen
class AdmissionLimits:
    """Everything one admission checks, atomically.

    Attributes:
        rates: rate limits (requests and token estimates) for any subjects.
        budgets: budgets to reserve ``reserve_micros`` on (e.g. the key's and its team's).
        reserve_micros: the call's maximum cost, reserved on every budget.
    """

    rates: tuple[RateCheck, ...] = ()
    budgets: tuple[BudgetCheck, ...] = ()
    reserve_micros: int = attrs.field(
        default=0, validator=lambda _i, _a, v: validate_micros(v, field="reserve_micros")
    )
    # Derived once per instance (reuse an AdmissionLimits per key to keep the hot path short).
    _ops: tuple[RateOp, ...] = attrs.field(init=False, eq=False, repr=False, hash=False)
    _token_limits: tuple[tuple[str, RateLimit, int], ...] = attrs.field(
        init=False, eq=False, repr=False, hash=False
    )
    _checks: tuple[tuple[RateLimit, int | None], ...] = attrs.field(
        init=False, eq=False, repr=False, hash=False
    )
    _static_lines: tuple[BudgetLine, ...] | None = attrs.field(init=False, eq=False, repr=False, hash=False)

    def __attrs_post_init__(self) -> None:
        ops = tuple(
            RateOp(f"{c.limit.kind.value}:{c.subject}", c.cost, c.limit.limit, c.limit.period_seconds * 1000)
            for c in self.rates
        )
        tokens = tuple((c.subject, c.limit, c.cost) for c in self.rates if c.limit.kind is RateKind.TOKENS)
        object.__setattr__(self, "_ops", ops)
        object.__setattr__(self, "_token_limits", tokens)
        object.__setattr__(self, "_checks", tuple((c.limit, c.cost) for c in self.rates))
        object.__setattr__(self, "_static_lines", _static_lines(self.budgets))

    @classmethod
    def simple(
        cls,
        subject: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        estimated_tokens: int = 0,
        budget_account: str | None = None,
        budget_limit_micros: int | None = None,
        reserve_micros: int = 0,
        period: BudgetPeriod = NO_RESET,
    ) -> AdmissionLimits:
        """The common case: one subject with requests/min and tokens/min, and one budget."""
        rates: list[RateCheck] = []
        if rpm is not None:
            rates.append(RateCheck(subject, RateLimit(rpm, 60, RateKind.REQUESTS), 1))
        if tpm is not None:
            rates.append(RateCheck(subject, RateLimit(tpm, 60, RateKind.TOKENS), estimated_tokens))
        budgets: tuple[BudgetCheck, ...] = ()
        if budget_account is not None and budget_limit_micros is not None:
            budgets = (BudgetCheck(budget_account, budget_limit_micros, period),)
        return cls(tuple(rates), budgets, reserve_micros)


_ZERO_START: Final = (0,)


def _static_lines(budgets: tuple[BudgetCheck, ...]) -> tuple[BudgetLine, ...] | None:
    """The budget lines when no budget ever resets (they never change), else ``None``."""
    if all(b.period.kind is PeriodKind.NONE for b in budgets):
        return tuple(BudgetLine(b.account, 0, None, b.limit_micros) for b in budgets)
    return None


class AdmissionPlan:
    """The reusable part of :class:`AdmissionLimits`: one subject's limits, validated once.

    An API key's rate limits and budget are the same for every request it makes; only the token
    estimate and the amount to reserve change. Build a plan once per key (and again when the key
    changes) and call :meth:`DefaultLimitsGate.acquire_plan` per request: nothing is validated
    or derived again on the hot path. :meth:`limits` turns a plan and the per-request figures into
    the equivalent :class:`AdmissionLimits` (what any other :class:`LimitsGate` takes).

    Args:
        rates: the rate checks; the ``cost`` of every tokens check is replaced by the request's
            token estimate.
        budgets: the budgets every admission reserves on.

    Raises:
        ValidationError: ``rate_limit.invalid`` when an item is not a :class:`RateCheck` /
            :class:`BudgetCheck`.
    """

    __slots__ = (
        "_acquire",
        "_admitter",
        "_bound_store",
        "_checks",
        "_op_parts",
        "_settler",
        "_static_lines",
        "_template",
        "_token_ops",
        "_token_positions",
        "budgets",
        "rates",
    )

    def __init__(self, rates: Sequence[RateCheck] = (), budgets: Sequence[BudgetCheck] = ()) -> None:
        rates = tuple(rates)
        budgets = tuple(budgets)
        if not all(isinstance(c, RateCheck) for c in rates):
            raise ValidationError("rate_limit.invalid", field="rates", reason="expected RateCheck items")
        if not all(isinstance(b, BudgetCheck) for b in budgets):
            raise ValidationError("rate_limit.invalid", field="budgets", reason="expected BudgetCheck items")
        #: The rate checks (the cost of tokens checks is the per-request estimate).
        self.rates: tuple[RateCheck, ...] = rates
        #: The budgets every admission reserves on.
        self.budgets: tuple[BudgetCheck, ...] = budgets
        # (limit, cost or None for "the estimate") per rate, in order
        self._checks: tuple[tuple[RateLimit, int | None], ...] = tuple(
            (c.limit, None if c.limit.kind is RateKind.TOKENS else c.cost) for c in rates
        )
        # (store key, cost or None, units, period_ms) per rate
        self._op_parts: tuple[tuple[str, int | None, int, int], ...] = tuple(
            (f"{c.limit.kind.value}:{c.subject}", cost, c.limit.limit, c.limit.period_seconds * 1000)
            for c, (_limit, cost) in zip(rates, self._checks, strict=True)
        )
        self._token_ops: tuple[tuple[str, int, int], ...] = tuple(
            (key, units, period) for key, cost, units, period in self._op_parts if cost is None
        )
        self._static_lines = _static_lines(budgets)
        # the in-process store this plan is bound to (its live state), and that store's compiled
        # admit/settle for the plan (MemoryLimitsStore.compile_bound)
        self._bound_store: object = None
        self._admitter: Callable[[int, str, int], tuple[int, list[int], tuple[int, ...]] | None] | None = None
        self._settler: Callable[[str | None, int, int | None, int | None], SettleOutcome | None] | None = None
        # acquire_plan_now of that gate for this plan, as one closure (DefaultLimitsGate._compile)
        self._acquire: Callable[[int, int, str], GateDecision] | None = None
        # the ops with the estimate filled in at these positions
        self._template = [(key, cost or 0, units, period) for key, cost, units, period in self._op_parts]
        self._token_positions = tuple(
            (i, key, units, period)
            for i, (key, cost, units, period) in enumerate(self._op_parts)
            if cost is None
        )

    def __repr__(self) -> str:
        return f"AdmissionPlan(rates={self.rates!r}, budgets={self.budgets!r})"

    @classmethod
    def simple(
        cls,
        subject: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_account: str | None = None,
        budget_limit_micros: int | None = None,
        period: BudgetPeriod = NO_RESET,
    ) -> AdmissionPlan:
        """The common case: one subject with requests/min and tokens/min, and one budget."""
        base = AdmissionLimits.simple(
            subject,
            rpm=rpm,
            tpm=tpm,
            budget_account=budget_account,
            budget_limit_micros=budget_limit_micros,
            period=period,
        )
        return cls(base.rates, base.budgets)

    @property
    def token_limits(self) -> tuple[tuple[str, RateLimit], ...]:
        """``(subject, limit)`` of every tokens check."""
        return tuple((c.subject, c.limit) for c in self.rates if c.limit.kind is RateKind.TOKENS)

    def limits(self, estimated_tokens: int, reserve_micros: int) -> AdmissionLimits:
        """The :class:`AdmissionLimits` of one request: tokens checks cost *estimated_tokens*.

        Raises:
            ValidationError: ``rate_limit.invalid`` / ``budget.invalid`` for a bad figure.
        """
        _check_cost(estimated_tokens)
        rates = tuple(
            c if c.limit.kind is not RateKind.TOKENS else RateCheck(c.subject, c.limit, estimated_tokens)
            for c in self.rates
        )
        return AdmissionLimits(rates, self.budgets, reserve_micros)


class GateTicket:
    """What :meth:`LimitsGate.settle` needs to settle an admission (keep it for the call's duration).

    Immutable; compared by value.

    Attributes:
        reservation_id: the budget reservation, ``None`` when no budget was checked.
        reserved_micros: the amount reserved on each budget.
        token_limits: ``(subject, limit, estimate)`` of every tokens limit, corrected on settle.
        period_starts: the start (epoch seconds) of each budget's period, in ``budgets`` order.
    """

    __slots__ = ("_estimate", "_period_starts", "_plan", "_reservation_id", "_reserved", "_token_limits")

    def __init__(
        self,
        reservation_id: str | None,
        reserved_micros: int,
        token_limits: tuple[tuple[str, RateLimit, int], ...],
        period_starts: tuple[int, ...] = (),
    ) -> None:
        self._reservation_id = reservation_id
        self._reserved = reserved_micros
        self._token_limits: tuple[tuple[str, RateLimit, int], ...] | None = token_limits
        self._period_starts = period_starts
        self._plan: AdmissionPlan | None = None
        self._estimate = 0

    @classmethod
    def _of_plan(
        cls,
        reservation_id: str | None,
        reserved_micros: int,
        plan: AdmissionPlan,
        estimate: int,
        period_starts: tuple[int, ...],
    ) -> GateTicket:
        # token_limits is derived from the plan only when someone reads it
        ticket = cls.__new__(cls)
        ticket._reservation_id = reservation_id
        ticket._reserved = reserved_micros
        ticket._token_limits = None
        ticket._period_starts = period_starts
        ticket._plan = plan
        ticket._estimate = estimate
        return ticket

    @property
    def reservation_id(self) -> str | None:
        """The budget reservation, ``None`` when no budget was checked."""
        return self._reservation_id

    @property
    def reserved_micros(self) -> int:
        """The amount reserved on each budget."""
        return self._reserved

    @property
    def token_limits(self) -> tuple[tuple[str, RateLimit, int], ...]:
        """``(subject, limit, estimate)`` of every tokens limit, corrected on settle."""
        if self._token_limits is None:
            assert self._plan is not None
            est = self._estimate
            self._token_limits = tuple((subject, limit, est) for subject, limit in self._plan.token_limits)
        return self._token_limits

    @property
    def period_starts(self) -> tuple[int, ...]:
        """The start (epoch seconds) of each budget's period, in ``budgets`` order."""
        return self._period_starts

    def _values(self) -> tuple[object, ...]:
        return (self._reservation_id, self._reserved, self.token_limits, self._period_starts)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, GateTicket)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return (
            f"GateTicket(reservation_id={self._reservation_id!r}, reserved_micros={self._reserved!r}, "
            f"token_limits={self.token_limits!r}, period_starts={self._period_starts!r})"
        )


class GateDecision:
    """The outcome of :meth:`LimitsGate.acquire`.

    Immutable; compared by value. The per-rate decisions of an admission made from an
    :class:`AdmissionPlan` are only built when :attr:`rates` (or :meth:`headers`) is read.

    Attributes:
        allowed: ``True`` when everything passed and was applied; ``False``: nothing was applied.
        rates: one decision per rate check, in order (headers and remaining counts).
        budget_available_micros: per budget, what is left after this reservation (or at the refusal).
        ticket: settle with it (``None`` when refused).
        refusal: the precise error when refused (rate limits first, then budgets), else ``None``.
    """

    __slots__ = ("_allowed", "_available", "_plan_ticket", "_rates", "_refusal", "_source", "_ticket")

    def __init__(
        self,
        allowed: bool,
        rates: tuple[RateLimitDecision, ...],
        budget_available_micros: tuple[int, ...],
        ticket: GateTicket | None,
        refusal: MaasError | None,
    ) -> None:
        self._allowed = allowed
        self._rates: tuple[RateLimitDecision, ...] | None = rates
        self._available = budget_available_micros
        self._ticket = ticket
        self._refusal = refusal
        self._source: tuple[tuple[tuple[RateLimit, int | None], ...], int, list[int], int] | None = None
        # (reservation id, amount, plan, estimate): the ticket of a plan admission, built when read
        self._plan_ticket: tuple[str | None, int, AdmissionPlan, int] | None = None

    @classmethod
    def _admitted(
        cls,
        checks: tuple[tuple[RateLimit, int | None], ...],
        estimate: int,
        levels: list[int],
        now_ms: int,
        available: tuple[int, ...],
        ticket: GateTicket,
    ) -> GateDecision:
        decision = cls.__new__(cls)
        decision._allowed = True
        decision._rates = None
        decision._available = available
        decision._ticket = ticket
        decision._refusal = None
        decision._source = (checks, estimate, levels, now_ms)
        decision._plan_ticket = None
        return decision

    @classmethod
    def _admitted_plan(
        cls,
        plan: AdmissionPlan,
        estimate: int,
        levels: list[int],
        now_ms: int,
        available: tuple[int, ...],
        reservation_id: str | None,
        amount: int,
    ) -> GateDecision:
        # an admission of a plan whose one budget never resets (period start 0)
        decision = cls.__new__(cls)
        decision._allowed = True
        decision._rates = None
        decision._available = available
        decision._ticket = None
        decision._refusal = None
        decision._source = (plan._checks, estimate, levels, now_ms)
        decision._plan_ticket = (reservation_id, amount, plan, estimate)
        return decision

    @property
    def allowed(self) -> bool:
        """``True`` when everything passed and was applied; ``False``: nothing was applied."""
        return self._allowed

    @property
    def rates(self) -> tuple[RateLimitDecision, ...]:
        """One decision per rate check, in order (headers and remaining counts)."""
        rates = self._rates
        if rates is None:
            assert self._source is not None
            checks, est, levels, now = self._source
            rates = tuple(
                [
                    _decide(limit, est if cost is None else cost, True, level, now)
                    for (limit, cost), level in zip(checks, levels, strict=True)
                ]
            )
            self._rates = rates
        return rates

    @property
    def budget_available_micros(self) -> tuple[int, ...]:
        """Per budget, what is left after this reservation (or at the refusal)."""
        return self._available

    @property
    def ticket(self) -> GateTicket | None:
        """Settle with it (``None`` when refused)."""
        ticket = self._ticket
        if ticket is None and self._plan_ticket is not None:
            rid, amount, plan, est = self._plan_ticket
            ticket = self._ticket = GateTicket._of_plan(rid, amount, plan, est, _ZERO_START)
        return ticket

    @property
    def refusal(self) -> MaasError | None:
        """The precise error when refused (rate limits first, then budgets), else ``None``."""
        return self._refusal

    def raise_if_refused(self) -> None:
        """Raise :attr:`refusal` when the admission was refused."""
        if self._refusal is not None:
            raise self._refusal

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers (the most restrictive decision per kind)."""
        source = self._source
        if self._rates is None and source is not None:
            # an admission: the same figures as the per-rate decisions, without building them
            checks, _estimate, levels, _now = source
            if not checks:  # a key without rate limits
                return {}
            fastest: dict[str, tuple[int, int, int]] = {}  # kind -> (limit, remaining, reset ms)
            for (limit, _cost), level in zip(checks, levels, strict=True):
                remaining, reset_ms = _window(limit, level)
                kind = limit.kind.value
                known = fastest.get(kind)
                if known is None or remaining < known[1]:
                    fastest[kind] = (limit.limit, remaining, reset_ms)
            headers: dict[str, str] = {}
            for kind, (units, remaining, reset_ms) in fastest.items():
                headers[_LIMIT_HEADER[kind]] = str(units)
                headers[_REMAINING_HEADER[kind]] = str(remaining)
                headers[_RESET_HEADER[kind]] = format_reset(reset_ms)
            return headers
        best: dict[RateKind, RateLimitDecision] = {}
        for decision in self.rates:
            current = best.get(decision.kind)
            if current is None or decision.remaining < current.remaining:
                best[decision.kind] = decision
        out: dict[str, str] = {}
        for decision in best.values():
            out.update(decision.headers())
        return out

    def _values(self) -> tuple[object, ...]:
        return (self._allowed, self.rates, self._available, self.ticket, self._refusal)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, GateDecision)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return (
            f"GateDecision(allowed={self._allowed!r}, rates={self.rates!r}, "
            f"budget_available_micros={self._available!r}, ticket={self.ticket!r}, "
            f"refusal={self._refusal!r})"
        )


@runtime_checkable
class LimitsGate(Protocol):
    """Rate limits and budget reservations of one admission as a single atomic step."""

    async def acquire(self, limits: AdmissionLimits) -> GateDecision:
        """Check all limits; apply all of them, or none. Never raises for a refusal."""
        ...

    async def settle(
        self, ticket: GateTicket, *, actual_tokens: int, actual_micros: int
    ) -> Settlement | None:
        """After the call: correct token counts and commit the actual cost (idempotent)."""
        ...

    async def release(self, ticket: GateTicket) -> Settlement | None:
        """The call failed: give back the token estimates and release the reservation (idempotent)."""
        ...


_RawAdmit = Callable[
    [Sequence[tuple[str, int, int, int]], str | None, int, Sequence[BudgetLine]],
    tuple[bool, bool, int, list[int], list[bool], list[list[int]]],
]
_RawSettle = Callable[
    [Sequence[tuple[str, int, int, int]], str | None, int | None],
    SettleOutcome | None,
]


_new_decision = GateDecision.__new__


def _sync_ops(store: object) -> tuple[Any, ...] | None:
    """The store's synchronous fast path (``sync_ops()``), if it offers one: ``(admit_raw,
    settle_now)``, optionally followed by ``(bind, compile_bound)``."""
    offer = getattr(store, "sync_ops", None)
    if offer is None or not callable(offer):
        return None
    ops = offer()
    return None if ops is None else tuple(ops)


def _check_settle_figures(actual_tokens: object, actual_micros: object) -> None:
    # exact ints in range pass at once; anything else gets the full check
    if actual_tokens.__class__ is not int or actual_tokens < 0:
        _check_count_arg(actual_tokens, "actual_tokens")
    if actual_micros.__class__ is not int or not 0 <= actual_micros <= MAX_BUDGET_MICROS:
        validate_micros(actual_micros, field="actual_micros")


def _check_count_arg(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError("rate_limit.invalid", field=field, reason="must be an integer >= 0")


class DefaultLimitsGate:
    """The :class:`LimitsGate` over a :class:`~maaskit.storage.ports.limits.LimitsStore`.

    One ``store.admit`` per :meth:`acquire` and one ``store.settle_admission`` per settle: one
    Redis round trip each with the Redis backend.

    A store that answers without I/O (the in-process
    :class:`~maaskit.storage.memory.limits.MemoryLimitsStore`) may offer a synchronous fast path
    through a ``sync_ops()`` method; the gate then skips the coroutine hops and the intermediate
    records, and :attr:`synchronous` is ``True`` (the ``*_now`` methods work). The results are
    exactly those of the asynchronous path.

    Args:
        store: memory or Redis backend.
        clock: decides the budget periods.
    """

    __slots__ = (
        "_bind_store",
        "_clock",
        "_compile_bound",
        "_raw_admit",
        "_raw_settle",
        "_store",
        "_time",
    )

    def __init__(self, store: LimitsStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._time = clock.time
        ops = _sync_ops(store)
        self._raw_admit: _RawAdmit | None = None if ops is None else ops[0]
        self._raw_settle: _RawSettle | None = None if ops is None else ops[1]
        # optional: bind a plan to the store's live state and compile it into closures (see
        # MemoryLimitsStore.bind and MemoryLimitsStore.compile_bound)
        self._bind_store: Callable[..., tuple[list[Any], list[list[int]]]] | None = None
        self._compile_bound: Callable[..., tuple[Any, Any]] | None = None
        if ops is not None and len(ops) > 3:
            self._bind_store, self._compile_bound = ops[2], ops[3]

    def __repr__(self) -> str:
        return f"DefaultLimitsGate({type(self._store).__name__})"

    @property
    def synchronous(self) -> bool:
        """``True`` when the store answers in-process: :meth:`acquire_plan_now` and the other
        ``*_now`` methods may be called (no I/O, no ``await``)."""
        return self._raw_admit is not None

    async def acquire(self, limits: AdmissionLimits) -> GateDecision:
        """See :meth:`LimitsGate.acquire`."""
        if self._raw_admit is not None:
            return self.acquire_now(limits)
        ops = limits._ops
        request: ReserveRequest | None = None
        ends: list[int | None] = []
        starts: list[int] = []
        now_ts = 0.0
        amount = limits.reserve_micros
        if limits.budgets:
            now_ts = self._clock.time()
            lines = []
            for b in limits.budgets:
                start, end = b.period.bounds_ts(now_ts)
                starts.append(start)
                ends.append(end)
                lines.append(BudgetLine(b.account, start, end, b.limit_micros))
            request = ReserveRequest(new_reservation_id(), amount, tuple(lines))
        outcome = await self._store.admit(ops, request)
        decisions = tuple(
            _decide(c.limit, c.cost, r.allowed, r.level, r.now_ms)
            for c, r in zip(limits.rates, outcome.rates, strict=True)
        )
        available: tuple[int, ...] = ()
        if outcome.reserve is not None:
            available = tuple(
                max(0, b.limit_micros - bal.committed_micros - bal.reserved_micros)
                for b, bal in zip(limits.budgets, outcome.reserve.balances, strict=True)
            )
        if outcome.ok:
            ticket = GateTicket(
                None if request is None else request.reservation_id,
                amount,
                limits._token_limits,
                tuple(starts),
            )
            return GateDecision(True, decisions, available, ticket, None)
        balances = () if outcome.reserve is None else outcome.reserve.balances
        refusal = _refusal(decisions, limits.budgets, balances, amount, ends, now_ts)
        return GateDecision(False, decisions, available, None, refusal)

    def acquire_now(self, limits: AdmissionLimits) -> GateDecision:
        """The synchronous :meth:`acquire` (only when :attr:`synchronous`).

        Raises:
            TypeError: the store has no synchronous path.
        """
        ticket_of = partial(_ticket_of_limits, limits)
        return self._admit_sync(
            limits._checks,
            0,
            limits._ops,
            limits.budgets,
            limits._static_lines,
            limits.reserve_micros,
            None,
            ticket_of,
        )

    async def acquire_plan(
        self,
        plan: AdmissionPlan,
        estimated_tokens: int,
        reserve_micros: int,
        *,
        reservation_id: str | None = None,
    ) -> GateDecision:
        """:meth:`acquire` of ``plan.limits(estimated_tokens, reserve_micros)``, without building it
        when the store is in-process.

        *reservation_id* names the budget reservation (it must be unique across processes, e.g.
        the request id); by default a fresh one is drawn.
        """
        if self._raw_admit is not None:
            return self.acquire_plan_now(
                plan, estimated_tokens, reserve_micros, reservation_id=reservation_id
            )
        return await self.acquire(plan.limits(estimated_tokens, reserve_micros))

    def acquire_plan_now(
        self,
        plan: AdmissionPlan,
        estimated_tokens: int,
        reserve_micros: int,
        *,
        reservation_id: str | None = None,
    ) -> GateDecision:
        """The synchronous :meth:`acquire_plan` (only when :attr:`synchronous`).

        Raises:
            TypeError: the store has no synchronous path.
            ValidationError: ``rate_limit.invalid`` / ``budget.invalid`` for a bad figure.
        """
        return self._acquire_plan_now(plan, estimated_tokens, reserve_micros, reservation_id)

    def _acquire_plan_now(
        self, plan: AdmissionPlan, estimated_tokens: int, reserve_micros: int, reservation_id: str | None
    ) -> GateDecision:
        est = estimated_tokens
        if est.__class__ is not int or not 0 <= est <= _MAX_COST:
            _check_cost(est)
        amount = reserve_micros
        if amount.__class__ is not int or not 0 <= amount <= MAX_BUDGET_MICROS:
            validate_micros(amount, field="reserve_micros")
        lines = plan._static_lines
        if (
            plan._bound_store is not self._store
            and lines is not None
            and len(lines) <= 1
            and self._compile_bound is not None
        ):
            self._bind(plan, lines)
        acquire = plan._acquire
        if acquire is not None and plan._bound_store is self._store:
            # The common case: at most one budget, which never resets, on the store's live state:
            # no look-ups, nothing built unless everything passes (see _compile_acquire).
            return acquire(est, amount, new_reservation_id() if reservation_id is None else reservation_id)
        return self._acquire_general(plan, est, amount, lines, reservation_id)

    def _compile_acquire(
        self, plan: AdmissionPlan, lines: tuple[BudgetLine, ...]
    ) -> Callable[[int, int, str], GateDecision]:
        """``acquire(estimate, reserve_micros, reservation_id)``: :meth:`acquire_plan_now` for one
        compiled plan, with everything it looks up bound once (the admission hot path)."""
        store = self._store
        admitter = plan._admitter
        assert admitter is not None
        checks = plan._checks
        has_budget = bool(lines)
        new = _new_decision
        slow = self._acquire_plan_now
        general = self._acquire_general

        def acquire(est: int, amount: int, rid: str) -> GateDecision:
            if (
                est.__class__ is not int
                or not 0 <= est <= _MAX_COST
                or amount.__class__ is not int
                or not 0 <= amount <= MAX_BUDGET_MICROS
                or plan._bound_store is not store
            ):
                return slow(plan, est, amount, rid)  # (says what is wrong, or binds again)
            admitted = admitter(est, rid, amount)
            if admitted is None:
                return general(plan, est, amount, lines, rid)  # refused: the general path says why
            decision = new(GateDecision)
            decision._allowed = True
            decision._rates = None
            decision._available = admitted[2]
            decision._ticket = None
            decision._refusal = None
            decision._source = (checks, est, admitted[1], admitted[0])
            decision._plan_ticket = (rid if has_budget else None, amount, plan, est)
            return decision

        return acquire

    def _acquire_general(
        self,
        plan: AdmissionPlan,
        est: int,
        amount: int,
        lines: tuple[BudgetLine, ...] | None,
        reservation_id: str | None,
    ) -> GateDecision:
        ops = plan._template
        positions = plan._token_positions
        if positions:
            ops = ops.copy()
            for i, key, units, period in positions:
                ops[i] = (key, est, units, period)
        if lines is None or len(lines) != 1:
            return self._admit_sync(plan._checks, est, ops, plan.budgets, lines, amount, reservation_id, plan)
        raw = self._raw_admit
        if raw is None:
            raise TypeError("this gate's store has no synchronous path; use the async methods")
        rid = new_reservation_id() if reservation_id is None else reservation_id
        rates_ok, budget_ok, now_ms, levels, allowed, counters = raw(ops, rid, amount, lines)
        counter = counters[0]
        free = lines[0][3] - counter[0] - counter[1]
        if rates_ok and budget_ok:
            return GateDecision._admitted_plan(
                plan, est, levels, now_ms, (free if free > 0 else 0,), rid, amount
            )
        return self._refused(
            plan._checks, est, allowed, levels, now_ms, plan.budgets, lines, counters, amount, 0.0
        )

    def _bind(self, plan: AdmissionPlan, lines: tuple[BudgetLine, ...]) -> None:
        """Bind *plan* to the store's live state and compile it (``bind`` and ``compile_bound``)."""
        assert self._bind_store is not None
        assert self._compile_bound is not None
        states, counters = self._bind_store(
            [key for key, _c, _u, _p in plan._op_parts], [(line[0], line[1]) for line in lines]
        )
        rates = [
            (state, cost, units, period)
            for state, (_key, cost, units, period) in zip(states, plan._op_parts, strict=True)
        ]
        budgets = [(counter, line[3]) for counter, line in zip(counters, lines, strict=True)]
        plan._admitter, plan._settler = self._compile_bound(rates, budgets, counters)
        plan._acquire = self._compile_acquire(plan, lines)
        plan._bound_store = self._store

    def _admit_sync(
        self,
        checks: tuple[tuple[RateLimit, int | None], ...],
        est: int,
        ops: Sequence[tuple[str, int, int, int]],
        budgets: tuple[BudgetCheck, ...],
        static_lines: tuple[BudgetLine, ...] | None,
        amount: int,
        rid: str | None,
        ticket_of: AdmissionPlan | Callable[[str | None, tuple[int, ...]], GateTicket],
    ) -> GateDecision:
        raw = self._raw_admit
        if raw is None:
            raise TypeError("this gate's store has no synchronous path; use the async methods")
        now_ts = 0.0
        if budgets:
            if rid is None:
                rid = new_reservation_id()
            lines = static_lines
            if lines is None:
                now_ts = self._time()
                lines = tuple(
                    BudgetLine(b.account, *b.period.bounds_ts(now_ts), b.limit_micros) for b in budgets
                )
                starts = tuple(line.period_start for line in lines)
            else:
                starts = (0,) * len(lines)
            rates_ok, budget_ok, now_ms, levels, allowed, counters = raw(ops, rid, amount, lines)
            if len(lines) == 1:
                free = lines[0][3] - counters[0][0] - counters[0][1]
                available: tuple[int, ...] = (free if free > 0 else 0,)
            else:
                available = tuple(
                    max(0, line.limit_micros - c[0] - c[1]) for line, c in zip(lines, counters, strict=True)
                )
        else:
            rid = None
            lines = ()
            starts = ()
            available = ()
            rates_ok, budget_ok, now_ms, levels, allowed, counters = raw(ops, None, amount, ())
        if rates_ok and budget_ok:
            if isinstance(ticket_of, AdmissionPlan):
                ticket = GateTicket._of_plan(rid, amount, ticket_of, est, starts)
            else:
                ticket = ticket_of(rid, starts)
            return GateDecision._admitted(checks, est, levels, now_ms, available, ticket)
        return self._refused(checks, est, allowed, levels, now_ms, budgets, lines, counters, amount, now_ts)

    def _refused(
        self,
        checks: tuple[tuple[RateLimit, int | None], ...],
        est: int,
        allowed: list[bool],
        levels: list[int],
        now_ms: int,
        budgets: tuple[BudgetCheck, ...],
        lines: tuple[BudgetLine, ...],
        counters: list[list[int]],
        amount: int,
        now_ts: float,
    ) -> GateDecision:
        """The decision of a refused admission (nothing was written; not a hot path)."""
        decisions = tuple(
            _decide(limit, est if cost is None else cost, ok, level, now_ms)
            for (limit, cost), ok, level in zip(checks, allowed, levels, strict=True)
        )
        if budgets and now_ts == 0.0:
            now_ts = self._time()
        ledger = tuple(LedgerBalance(c[0], c[1], c[2]) for c in counters)
        available = tuple(
            max(0, line.limit_micros - bal.committed_micros - bal.reserved_micros)
            for line, bal in zip(lines, ledger, strict=True)
        )
        refusal = _refusal(decisions, budgets, ledger, amount, [line.period_end for line in lines], now_ts)
        return GateDecision(False, decisions, available, None, refusal)

    def _adjustments(self, ticket: GateTicket, actual_tokens: int | None) -> list[tuple[str, int, int, int]]:
        plan = ticket._plan
        if plan is not None:
            return _plan_adjustments(plan, ticket._estimate, actual_tokens)
        if actual_tokens is None:
            return [
                RateAdjust(f"tokens:{subject}", -est, limit.limit, limit.period_seconds * 1000)
                for subject, limit, est in ticket.token_limits
                if est
            ]
        return [
            RateAdjust(f"tokens:{subject}", actual_tokens - est, limit.limit, limit.period_seconds * 1000)
            for subject, limit, est in ticket.token_limits
            if actual_tokens != est
        ]

    async def settle(
        self, ticket: GateTicket, *, actual_tokens: int, actual_micros: int
    ) -> Settlement | None:
        """See :meth:`LimitsGate.settle`."""
        if self._raw_settle is not None:
            return self.settle_now(ticket, actual_tokens=actual_tokens, actual_micros=actual_micros)
        _check_settle_figures(actual_tokens, actual_micros)
        adjustments = self._adjustments(ticket, actual_tokens)
        outcome = await self._store.settle_admission(adjustments, ticket.reservation_id, actual_micros)  # type: ignore[arg-type]
        if outcome is not None and outcome.overage_micros:
            log_overage(outcome)
        return outcome

    def settle_now(self, ticket: GateTicket, *, actual_tokens: int, actual_micros: int) -> Settlement | None:
        """The synchronous :meth:`settle` (only when :attr:`synchronous`).

        Raises:
            TypeError: the store has no synchronous path.
        """
        raw = self._raw_settle
        if raw is None:
            raise TypeError("this gate's store has no synchronous path; await settle()")
        _check_settle_figures(actual_tokens, actual_micros)
        outcome = raw(self._adjustments(ticket, actual_tokens), ticket._reservation_id, actual_micros)
        if outcome is not None and outcome.overage_micros:
            log_overage(outcome)
        return outcome

    def _settle_admitted_now(
        self, decision: GateDecision, actual_tokens: int | None, actual_micros: int | None
    ) -> Settlement | None:
        """Settle (or, with ``None`` figures, release) an admitted *decision* of this gate,
        synchronously, without materialising its ticket."""
        raw = self._raw_settle
        parts = decision._plan_ticket
        if raw is None or parts is None:
            ticket = decision.ticket
            if ticket is None:
                raise TypeError("a refused decision has nothing to settle")
            if actual_tokens is None or actual_micros is None:
                return self.release_now(ticket)
            return self.settle_now(ticket, actual_tokens=actual_tokens, actual_micros=actual_micros)
        rid, _amount, plan, est = parts
        settler = plan._settler
        if settler is not None and plan._bound_store is self._store:
            if actual_tokens is None:
                return settler(rid, est, None, None)
            _check_settle_figures(actual_tokens, actual_micros)
            settled = settler(rid, est, actual_tokens, actual_micros)
            if settled is not None and settled.overage_micros:
                log_overage(settled)
            return settled
        if actual_tokens is None:
            return raw(_plan_adjustments(plan, est, None), rid, None)
        _check_settle_figures(actual_tokens, actual_micros)
        outcome = raw(_plan_adjustments(plan, est, actual_tokens), rid, actual_micros)
        if outcome is not None and outcome.overage_micros:
            log_overage(outcome)
        return outcome

    async def release(self, ticket: GateTicket) -> Settlement | None:
        """See :meth:`LimitsGate.release`."""
        if self._raw_settle is not None:
            return self.release_now(ticket)
        adjustments = self._adjustments(ticket, None)
        return await self._store.settle_admission(adjustments, ticket.reservation_id, None)  # type: ignore[arg-type]

    def release_now(self, ticket: GateTicket) -> Settlement | None:
        """The synchronous :meth:`release` (only when :attr:`synchronous`).

        Raises:
            TypeError: the store has no synchronous path.
        """
        raw = self._raw_settle
        if raw is None:
            raise TypeError("this gate's store has no synchronous path; await release()")
        return raw(self._adjustments(ticket, None), ticket._reservation_id, None)


def _plan_adjustments(
    plan: AdmissionPlan, est: int, actual_tokens: int | None
) -> list[tuple[str, int, int, int]]:
    """The token corrections of a plan admission: ``actual - estimate`` (``None``: a release)."""
    if actual_tokens is None:  # release: give the estimate back
        return [(key, -est, units, period) for key, units, period in plan._token_ops] if est else []
    if actual_tokens == est:
        return []
    return [(key, actual_tokens - est, units, period) for key, units, period in plan._token_ops]


def _ticket_of_limits(limits: AdmissionLimits, rid: str | None, starts: tuple[int, ...]) -> GateTicket:
    return GateTicket(rid, limits.reserve_micros, limits._token_limits, starts)


def _waits_longer(decision: RateLimitDecision, than: RateLimitDecision) -> bool:
    return (decision.retry_after_ms or 0) > (than.retry_after_ms or 0)


def _refusal(
    decisions: tuple[RateLimitDecision, ...],
    budgets: tuple[BudgetCheck, ...],
    balances: Sequence[LedgerBalance],
    amount: int,
    ends: Sequence[int | None],
    now_ts: float,
) -> MaasError | None:
    """The precise error of a refused admission: a refusing rate, else the first budget.

    Of several refusing rates, one that can never pass (``rate_limit.request_too_large``) wins,
    then the one with the longest wait: after ``retry_after`` the request must pass them all.
    """
    refused = None
    for decision in decisions:
        if not decision.allowed and (
            refused is None or decision.too_large or _waits_longer(decision, refused)
        ):
            refused = decision
            if decision.too_large:
                break
    if refused is not None:
        return refused.error()
    for i, (b, bal) in enumerate(zip(budgets, balances, strict=True)):
        if bal.committed_micros + bal.reserved_micros + amount > b.limit_micros:
            return budget_exceeded(
                b.account, amount, bal.committed_micros, bal.reserved_micros, b.limit_micros, ends[i], now_ts
            )
    return None

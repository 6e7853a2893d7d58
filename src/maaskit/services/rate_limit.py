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

from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

import attrs

from maaskit.clock import Clock
from maaskit.errors import MaasError, RateLimitedError, ValidationError
from maaskit.services.budget import (
    NO_RESET,
    BudgetPeriod,
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
    LimitsStore,
    RateAdjust,
    RateOp,
    ReserveRequest,
)

__all__ = [
    "AdmissionLimits",
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


def _decide(limit: RateLimit, cost: int, allowed: bool, level: int, now_ms: int) -> RateLimitDecision:
    period_ms = limit.period_seconds * 1000
    units = limit.limit
    capacity = units * period_ms
    free = capacity - level
    remaining = free // period_ms if free > 0 else 0
    reset_after = -(-level // units)
    retry: int | None = None
    if not allowed and cost <= units:
        retry = -(-(level + cost * period_ms - capacity) // units)
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

    def __attrs_post_init__(self) -> None:
        ops = tuple(
            RateOp(f"{c.limit.kind.value}:{c.subject}", c.cost, c.limit.limit, c.limit.period_seconds * 1000)
            for c in self.rates
        )
        tokens = tuple((c.subject, c.limit, c.cost) for c in self.rates if c.limit.kind is RateKind.TOKENS)
        object.__setattr__(self, "_ops", ops)
        object.__setattr__(self, "_token_limits", tokens)

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


@attrs.frozen
class GateTicket:
    """What :meth:`LimitsGate.settle` needs to settle an admission (keep it for the call's duration).

    Attributes:
        reservation_id: the budget reservation, ``None`` when no budget was checked.
        reserved_micros: the amount reserved on each budget.
        token_limits: ``(subject, limit, estimate)`` of every tokens limit, corrected on settle.
        period_starts: the start (epoch seconds) of each budget's period, in ``budgets`` order.
    """

    reservation_id: str | None
    reserved_micros: int
    token_limits: tuple[tuple[str, RateLimit, int], ...]
    period_starts: tuple[int, ...] = ()


@attrs.frozen
class GateDecision:
    """The outcome of :meth:`LimitsGate.acquire`.

    Attributes:
        allowed: ``True`` when everything passed and was applied; ``False``: nothing was applied.
        rates: one decision per rate check, in order (headers and remaining counts).
        budget_available_micros: per budget, what is left after this reservation (or at the refusal).
        ticket: settle with it (``None`` when refused).
        refusal: the precise error when refused (rate limits first, then budgets), else ``None``.
    """

    allowed: bool
    rates: tuple[RateLimitDecision, ...]
    budget_available_micros: tuple[int, ...]
    ticket: GateTicket | None
    refusal: MaasError | None

    def raise_if_refused(self) -> None:
        """Raise :attr:`refusal` when the admission was refused."""
        if self.refusal is not None:
            raise self.refusal

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers (the most restrictive decision per kind)."""
        best: dict[RateKind, RateLimitDecision] = {}
        for decision in self.rates:
            current = best.get(decision.kind)
            if current is None or decision.remaining < current.remaining:
                best[decision.kind] = decision
        out: dict[str, str] = {}
        for decision in best.values():
            out.update(decision.headers())
        return out


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


class DefaultLimitsGate:
    """The :class:`LimitsGate` over a :class:`~maaskit.storage.ports.limits.LimitsStore`.

    One ``store.admit`` per :meth:`acquire` and one ``store.settle_admission`` per settle: one
    Redis round trip each with the Redis backend.

    Args:
        store: memory or Redis backend.
        clock: decides the budget periods.
    """

    __slots__ = ("_clock", "_store")

    def __init__(self, store: LimitsStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def __repr__(self) -> str:
        return f"DefaultLimitsGate({type(self._store).__name__})"

    async def acquire(self, limits: AdmissionLimits) -> GateDecision:
        """See :meth:`LimitsGate.acquire`."""
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
        refusal: MaasError | None = None
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
        for decision in decisions:
            if not decision.allowed:
                refusal = decision.error()
                break
        if refusal is None and outcome.reserve is not None:
            for i, (b, bal) in enumerate(zip(limits.budgets, outcome.reserve.balances, strict=True)):
                if bal.committed_micros + bal.reserved_micros + amount > b.limit_micros:
                    refusal = budget_exceeded(
                        b.account,
                        amount,
                        bal.committed_micros,
                        bal.reserved_micros,
                        b.limit_micros,
                        ends[i],
                        now_ts,
                    )
                    break
        return GateDecision(False, decisions, available, None, refusal)

    async def settle(
        self, ticket: GateTicket, *, actual_tokens: int, actual_micros: int
    ) -> Settlement | None:
        """See :meth:`LimitsGate.settle`."""
        if isinstance(actual_tokens, bool) or not isinstance(actual_tokens, int) or actual_tokens < 0:
            raise ValidationError(
                "rate_limit.invalid", field="actual_tokens", reason="must be an integer >= 0"
            )
        validate_micros(actual_micros, field="actual_micros")
        adjustments = [
            RateAdjust(f"tokens:{subject}", actual_tokens - est, limit.limit, limit.period_seconds * 1000)
            for subject, limit, est in ticket.token_limits
            if actual_tokens != est
        ]
        outcome = await self._store.settle_admission(adjustments, ticket.reservation_id, actual_micros)
        if outcome is not None:
            log_overage(outcome)
        return outcome

    async def release(self, ticket: GateTicket) -> Settlement | None:
        """See :meth:`LimitsGate.release`."""
        adjustments = [
            RateAdjust(f"tokens:{subject}", -est, limit.limit, limit.period_seconds * 1000)
            for subject, limit, est in ticket.token_limits
            if est
        ]
        return await self._store.settle_admission(adjustments, ticket.reservation_id, None)

"""Rate limits, budgets and admissions in Redis (:class:`~maaskit.storage.ports.limits.LimitsStore`).

Shared by every replica and atomic: each operation is one Lua script (``lua/limits_admit.lua``,
``lua/limits_settle.lua``, ``lua/limits_sweep.lua``) run with ``EVALSHA`` through redis-py's
``register_script``, so an admission (any number of rate limits plus a budget reservation)
costs exactly **one** round trip and a settlement at most one. Call
:meth:`RedisLimitsStore.load_scripts` at start-up so the first request does not pay the
``SCRIPT LOAD`` fallback.

Keys (all under *prefix*): ``rl:<kind>:<subject>`` (hash ``l``/``t``: GCRA level and time,
expiring once drained), ``bud:<account>:<period_start>`` (hash ``c``/``r``/``v``: committed,
reserved and overage micro-dollars, expiring *period_retention* seconds after the period ends),
``res:<id>`` (one reservation: status, amount, its budget keys; kept *reservation_ttl*
seconds while open and *settled_ttl* seconds after settling, for idempotent settles) and
``resq`` (a sorted set of the open reservations' keys scored by their creation time in ms:
admit adds, settle removes, :meth:`RedisLimitsStore.release_stale` expires the old ones a
crashed replica never settled).

Time: by default the scripts use the Redis server's ``TIME``, so replicas with skewed clocks
agree on rate limits; pass a *clock* to use it instead (tests use a ``FakeClock``). Budget
periods are decided by the service's clock.

Limitation: the settle and sweep scripts reach the budget keys named in the reservation hash
(the sweep also the reservation keys in its index), which are not declared in ``KEYS``: fine
on a single Redis server or Sentinel, not on Redis Cluster.

Example::

    import redis.asyncio as redis
    from maaskit.storage.redis.limits import RedisLimitsStore

    store = RedisLimitsStore(redis.Redis.from_url("redis://127.0.0.1:6379/0"))
    await store.load_scripts()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final

import redis.asyncio as redis_asyncio
import redis.exceptions as redis_errors

from maaskit.clock import Clock
from maaskit.errors import ConflictError, NotFoundError, UnavailableError
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
)

__all__ = ["RedisLimitsStore"]

_UNAVAILABLE: Final = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, asyncio.TimeoutError)
_STATUS: Final = {
    b"c": SettlementStatus.COMMITTED,
    b"r": SettlementStatus.RELEASED,
    b"e": SettlementStatus.EXPIRED,
}


def _script(name: str) -> str:
    return (resources.files("maaskit.storage.redis") / "lua" / name).read_text(encoding="utf-8")


class RedisLimitsStore:
    """The Redis :class:`~maaskit.storage.ports.limits.LimitsStore`.

    Args:
        client: a ``redis.asyncio.Redis`` with ``decode_responses=False``.
        prefix: prepended to every key (e.g. ``"maaskit:"``).
        clock: time source for rate limits; ``None`` (default) uses the Redis server's clock.
        reservation_ttl: seconds an open reservation is kept. Keep it well above the timeout
            after which :meth:`release_stale` expires unsettled ones: once the hash is gone its
            amount can no longer be given back and stays reserved in its period.
        settled_ttl: seconds a settled reservation is remembered for idempotent settles.
        period_retention: seconds a period's counters are kept after the period ended.
    """

    __slots__ = (
        "_admit",
        "_client",
        "_clock",
        "_period_retention",
        "_prefix",
        "_reservation_ttl",
        "_settle",
        "_settled_ttl",
        "_sweep",
    )

    def __init__(
        self,
        client: redis_asyncio.Redis,
        *,
        prefix: str = "maaskit:",
        clock: Clock | None = None,
        reservation_ttl: int = 7 * 86400,
        settled_ttl: int = 86400,
        period_retention: int = 35 * 86400,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._reservation_ttl = reservation_ttl
        self._settled_ttl = settled_ttl
        self._period_retention = period_retention
        self._admit = client.register_script(_script("limits_admit.lua"))
        self._settle = client.register_script(_script("limits_settle.lua"))
        self._sweep = client.register_script(_script("limits_sweep.lua"))

    def __repr__(self) -> str:
        return f"RedisLimitsStore(prefix={self._prefix!r})"

    async def load_scripts(self) -> None:
        """``SCRIPT LOAD`` every script (idempotent), so requests only ever send ``EVALSHA``."""
        try:
            for script in (self._admit, self._settle, self._sweep):
                await self._client.script_load(script.script)
        except _UNAVAILABLE as exc:
            raise UnavailableError("redis.unavailable") from exc

    def _now_arg(self) -> int:
        return -1 if self._clock is None else int(self._clock.time() * 1000 + 0.001)

    def _budget_key(self, account: str, period_start: int) -> str:
        return f"{self._prefix}bud:{account}:{period_start}"

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        try:
            result = await script(keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise UnavailableError("redis.unavailable") from exc
        return list(result)

    async def admit(self, rates: Sequence[RateOp], reserve: ReserveRequest | None) -> AdmitOutcome:
        """Rate checks and reservation in one ``EVALSHA`` (see the port)."""
        prefix = self._prefix
        keys = [f"{prefix}rl:{op.key}" for op in rates]
        args: list[Any] = [self._now_arg(), len(rates)]
        for op in rates:
            args += (op.cost, op.limit, op.period_ms)
        if reserve is None:
            args += (0, 0, 0)
        else:
            lines = reserve.lines
            args += (len(lines), reserve.amount_micros, self._reservation_ttl)
            now_s = time.time() if self._clock is None else self._clock.time()
            for line in lines:
                keys.append(self._budget_key(line.account, line.period_start))
                ttl = 0
                if line.period_end is not None:
                    ttl = max(1, int(line.period_end + self._period_retention - now_s))
                args += (line.limit_micros, ttl)
            keys.append(f"{prefix}res:{reserve.reservation_id}")
            keys.append(f"{prefix}resq")
        out = await self._run(self._admit, keys, args)
        if out[0] == -409:
            assert reserve is not None
            raise ConflictError("budget.reservation_mismatch", reservation_id=reserve.reservation_id)
        ok = out[0] == 1
        now = int(out[1])
        n = len(rates)
        outcomes = tuple(RateOutcome(out[2 + 2 * i] == 1, int(out[3 + 2 * i]), now) for i in range(n))
        reserve_outcome: ReserveOutcome | None = None
        if reserve is not None:
            base = 2 + 2 * n
            balances = tuple(
                LedgerBalance(int(out[base + 3 * j]), int(out[base + 3 * j + 1]), int(out[base + 3 * j + 2]))
                for j in range(len(reserve.lines))
            )
            amount = reserve.amount_micros
            budget_ok = ok or all(
                bal.committed_micros + bal.reserved_micros + amount <= line.limit_micros
                for bal, line in zip(balances, reserve.lines, strict=True)
            )
            reserve_outcome = ReserveOutcome(budget_ok, balances)
        return AdmitOutcome(ok, now, outcomes, reserve_outcome)

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        """Reserve on every line, all or nothing (see the port)."""
        outcome = (await self.admit((), request)).reserve
        assert outcome is not None
        return outcome

    async def settle(self, reservation_id: str, actual_micros: int | None) -> SettleOutcome:
        """Commit or release a reservation exactly once (see the port)."""
        outcome = await self.settle_admission((), reservation_id, actual_micros)
        assert outcome is not None
        return outcome

    async def settle_admission(
        self,
        adjustments: Sequence[RateAdjust],
        reservation_id: str | None,
        actual_micros: int | None,
    ) -> SettleOutcome | None:
        """Rate corrections and the reservation's settlement in one ``EVALSHA`` (see the port)."""
        if not adjustments and reservation_id is None:
            return None
        prefix = self._prefix
        keys = [f"{prefix}rl:{adj.key}" for adj in adjustments]
        args: list[Any] = [self._now_arg(), len(adjustments)]
        for adj in adjustments:
            args += (adj.delta, adj.limit, adj.period_ms)
        if reservation_id is None:
            args += (0, "r", 0, 0)
        else:
            keys.append(f"{prefix}res:{reservation_id}")
            keys.append(f"{prefix}resq")
            mode = "r" if actual_micros is None else "c"
            args += (1, mode, actual_micros or 0, self._settled_ttl)
        out = await self._run(self._settle, keys, args)
        if out[0] == -404:
            raise NotFoundError("budget.reservation_not_found", reservation_id=reservation_id)
        if out[0] == 0 or reservation_id is None:
            return None
        return SettleOutcome(reservation_id, _STATUS[bytes(out[1])], int(out[2]), int(out[3]), out[4] == 1)

    async def release_stale(self, created_before_ms: int, *, limit: int = 1000) -> int:
        """Expire at most *limit* open reservations created before the cutoff (epoch ms).

        Implements :class:`~maaskit.storage.ports.limits.StaleReservationSweeper` in one
        ``EVALSHA`` (``lua/limits_sweep.lua``), atomic against settles and other sweeps. The
        creation time is the admit script's clock (the *clock* given here, else the Redis
        server's). Index entries whose reservation is already settled or gone are dropped
        without counting, so a batch can come back short while older entries remain.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        out = await self._run(
            self._sweep, [f"{self._prefix}resq"], [int(created_before_ms), limit, self._settled_ttl]
        )
        return int(out[0])

    async def balance(self, account: str, period_start: int) -> LedgerBalance:
        """The counters of one budget period (zeros when it has none)."""
        try:
            c, r, v = await self._client.hmget(self._budget_key(account, period_start), ["c", "r", "v"])
        except _UNAVAILABLE as exc:
            raise UnavailableError("redis.unavailable") from exc
        return LedgerBalance(int(c or 0), int(r or 0), int(v or 0))

    async def reset_rate(self, key: str) -> None:
        """Forget the rate-limit state of *key*."""
        try:
            await self._client.delete(f"{self._prefix}rl:{key}")
        except _UNAVAILABLE as exc:
            raise UnavailableError("redis.unavailable") from exc

"""Integration with LiteLLM: full sync, scheduled auto-sync, conflict policy, health and audit.

:class:`DefaultIntegrationService` runs a **full sync** - the model catalog first
(:meth:`~maaskit.services.catalog.ModelCatalog.sync_models`), then teams and keys pushed to
LiteLLM. Teams and keys belong to other modules, so they come in through two small ports defined
here, :class:`TeamPushSource` and :class:`KeyPushSource`.

The **scheduler** (:meth:`~DefaultIntegrationService.start` / :meth:`~DefaultIntegrationService.aclose`)
repeats the full sync every ``interval`` seconds, plus or minus ``jitter`` (a fraction), and is
**single-flight across replicas**: each run first takes a lease through a
:class:`~maaskit.storage.ports.catalog.SyncLock` (SQL: a row in ``maaskit_sync_locks`` taken by a
conditional ``UPDATE``/``INSERT``); a replica that does not get it skips the round.

Every run, successful or not, is written to the **audit trail**
(:class:`~maaskit.storage.ports.catalog.SyncRunStore`, SQL table ``maaskit_sync_runs``).

Example::

    from maaskit.services.integration import DefaultIntegrationService

    integration = DefaultIntegrationService(catalog, litellm, lock=SqlSyncLock(db), runs=SqlSyncRunStore(db),
                                            interval=300)
    report = await integration.full_sync()
    await integration.start()          # scheduled auto-sync
    ...
    await integration.aclose()
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import attrs
import structlog

from maaskit._tasks import cancel_and_wait
from maaskit.clock import Clock, SystemClock
from maaskit.errors import MaasError, NotFoundError, ValidationError
from maaskit.services.catalog import ConflictPolicy, ModelCatalog, SyncReport, SyncRun
from maaskit.services.litellm import ConnectionCheck, LiteLLMService
from maaskit.storage.ports.catalog import SyncLock, SyncRunStore

__all__ = [
    "DefaultIntegrationService",
    "FullSyncReport",
    "IntegrationHealth",
    "IntegrationService",
    "KeyPushSource",
    "KeySpec",
    "PushReport",
    "TeamPushSource",
    "TeamSpec",
]

_log = structlog.get_logger(__name__)
_LOCK_NAME = "litellm_sync"


@attrs.frozen
class TeamSpec:
    """A team as maaskit wants it in LiteLLM."""

    team_id: str
    team_alias: str | None = None
    models: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    max_budget: Decimal | None = None


@attrs.frozen
class KeySpec:
    """A key as maaskit wants it in LiteLLM.

    Attributes:
        key_id: maaskit's key id (sent as the LiteLLM ``key_alias`` ``maaskit:<key_id>``).
        litellm_token: the LiteLLM token hash from an earlier push (``None``: not pushed yet).
    """

    key_id: str
    models: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    max_budget: Decimal | None = None
    team_id: str | None = None
    user_id: str | None = None
    litellm_token: str | None = None


@runtime_checkable
class TeamPushSource(Protocol):
    """The teams module's side of the push."""

    async def teams_for_litellm(self) -> Sequence[TeamSpec]:
        """Every team that should exist in LiteLLM."""
        ...


@runtime_checkable
class KeyPushSource(Protocol):
    """The API-keys module's side of the push."""

    async def keys_for_litellm(self) -> Sequence[KeySpec]:
        """Every key that should exist in LiteLLM."""
        ...

    async def remember_litellm_token(self, key_id: str, token: str) -> None:
        """Store the LiteLLM token hash of a key created by the push."""
        ...


@attrs.frozen
class PushReport:
    """What a push of teams or keys did (ids)."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def summary(self) -> dict[str, int]:
        """Counts only."""
        return {k: len(getattr(self, k)) for k in ("created", "updated", "unchanged", "conflicts", "errors")}


@attrs.frozen
class FullSyncReport:
    """The result of :meth:`IntegrationService.full_sync`."""

    run_id: str
    models: SyncReport
    teams: PushReport
    keys: PushReport
    started_at: datetime
    finished_at: datetime

    def summary(self) -> dict[str, Any]:
        """Counts for the audit trail."""
        return {
            "models": self.models.summary(),
            "teams": self.teams.summary(),
            "keys": self.keys.summary(),
        }


@attrs.frozen
class IntegrationHealth:
    """The result of :meth:`IntegrationService.integration_health`."""

    healthy: bool
    connection: ConnectionCheck
    breaker_state: str | None
    last_run: SyncRun | None
    last_success_at: datetime | None
    consecutive_failures: int
    scheduler_running: bool
    lock_holder: str | None


@runtime_checkable
class IntegrationService(Protocol):
    """LiteLLM integration: full sync, scheduled auto-sync, health, audit trail."""

    async def full_sync(self) -> FullSyncReport:
        """Models, then teams and keys; recorded in the audit trail."""
        ...

    async def run_scheduled(self) -> FullSyncReport | None:
        """One scheduled round: take the lease, sync, release; ``None`` when another replica has it."""
        ...

    async def start(self) -> None:
        """Start the auto-sync loop."""
        ...

    async def aclose(self) -> None:
        """Stop the auto-sync loop (waits for a running round to end)."""
        ...

    async def integration_health(self) -> IntegrationHealth:
        """Connection, breaker, last run and scheduler state."""
        ...

    async def recent_runs(self, limit: int = 20) -> list[SyncRun]:
        """The audit trail, newest first."""
        ...


def _same_budget(a: Decimal | None, b: Decimal | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a == b)


class DefaultIntegrationService:
    """:class:`IntegrationService` over a catalog and a LiteLLM service.

    Args:
        catalog: the model catalog.
        litellm: the LiteLLM service (also the catalog's model source).
        lock: the cross-replica lease for scheduled runs.
        runs: the audit trail store.
        teams: the teams to push (``None``: no team push).
        keys: the keys to push (``None``: no key push).
        policy: conflict policy for models, teams and keys (``remote_wins``: remote values are
            kept; ``local_wins``: maaskit's values are pushed over differing remote ones;
            ``report_only``: differences are only reported).
        clock: time source.
        interval: seconds between scheduled runs.
        jitter: random spread of the interval, as a fraction (``0.1`` = +/-10 %).
        lock_ttl: seconds the lease is held before another replica may take it.
        owner: this replica's name in the lease and the audit trail (default: host + random).
        sleep: the coroutine function that waits between runs (inject one in tests).
        rng: the random generator for the jitter.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        litellm: LiteLLMService,
        *,
        lock: SyncLock,
        runs: SyncRunStore,
        teams: TeamPushSource | None = None,
        keys: KeyPushSource | None = None,
        policy: ConflictPolicy = ConflictPolicy.REMOTE_WINS,
        clock: Clock | None = None,
        interval: float = 300.0,
        jitter: float = 0.1,
        lock_ttl: float = 600.0,
        owner: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        for name, value, low in (("interval", interval, 0.0), ("lock_ttl", lock_ttl, 0.0)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= low:
                raise ValidationError("integration.invalid_config", reason=f"{name} must be > 0")
        if not isinstance(jitter, int | float) or not 0 <= jitter < 1:
            raise ValidationError("integration.invalid_config", reason="jitter must be in [0, 1)")
        self._catalog = catalog
        self._litellm = litellm
        self._lock = lock
        self._runs = runs
        self._teams = teams
        self._keys = keys
        self._policy = ConflictPolicy(policy)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._interval = float(interval)
        self._jitter = float(jitter)
        self._lock_ttl = float(lock_ttl)
        self._owner = owner or f"{socket.gethostname()[:200]}-{secrets.token_hex(4)}"
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._task: asyncio.Task[None] | None = None
        self._running = asyncio.Lock()
        self._failures = 0
        self._last_success: datetime | None = None

    def __repr__(self) -> str:
        return f"DefaultIntegrationService(owner={self._owner!r}, interval={self._interval})"

    @property
    def owner(self) -> str:
        """This replica's lease owner name."""
        return self._owner

    def next_delay(self) -> float:
        """The wait before the next scheduled run: ``interval`` +/- ``jitter``."""
        spread = self._interval * self._jitter
        return max(0.0, self._interval + self._rng.uniform(-spread, spread))

    # -- sync -----------------------------------------------------------------------------

    async def full_sync(self) -> FullSyncReport:
        """Sync models, then push teams and keys; every run lands in the audit trail.

        Raises:
            MaasError: when the model sync fails (recorded as a failed run first).
        """
        async with self._running:
            return await self._full_sync()

    async def _full_sync(self) -> FullSyncReport:
        run_id = secrets.token_hex(12)
        started = self._clock.now()
        try:
            models = await self._catalog.sync_models(self._litellm, policy=self._policy)
            teams = await self._push_teams()
            keys = await self._push_keys()
        except MaasError as exc:
            self._failures += 1
            await self._record(
                SyncRun(run_id, "full", self._owner, started, self._clock.now(), False, {}, exc.code)
            )
            _log.warning("integration.sync_failed", error=exc.code, owner=self._owner)
            raise
        report = FullSyncReport(run_id, models, teams, keys, started, self._clock.now())
        self._failures = 0
        self._last_success = report.finished_at
        await self._record(
            SyncRun(run_id, "full", self._owner, started, report.finished_at, True, report.summary())
        )
        return report

    async def _record(self, run: SyncRun) -> None:
        try:
            await self._runs.add(run)
        except MaasError as exc:  # the audit store being down must not hide the sync's own result
            _log.error("integration.audit_failed", error=exc.code)

    async def _push_teams(self) -> PushReport:
        if self._teams is None:
            return PushReport()
        created: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        conflicts: list[str] = []
        errors: list[str] = []
        for spec in await self._teams.teams_for_litellm():
            try:
                try:
                    remote = await self._litellm.team_info(spec.team_id)
                except NotFoundError:
                    await self._litellm.new_team(
                        team_id=spec.team_id,
                        team_alias=spec.team_alias,
                        models=list(spec.models),
                        max_budget=spec.max_budget,
                    )
                    created.append(spec.team_id)
                    continue
                if (
                    set(remote.models) == set(spec.models)
                    and _same_budget(remote.max_budget, spec.max_budget)
                    and remote.team_alias == spec.team_alias
                ):
                    unchanged.append(spec.team_id)
                    continue
                conflicts.append(spec.team_id)
                if self._policy is ConflictPolicy.LOCAL_WINS:
                    await self._litellm.update_team(
                        spec.team_id,
                        team_alias=spec.team_alias,
                        models=list(spec.models),
                        max_budget=spec.max_budget,
                    )
                    updated.append(spec.team_id)
            except MaasError as exc:
                errors.append(f"{spec.team_id}: {exc.code}")
        return PushReport(tuple(created), tuple(updated), tuple(unchanged), tuple(conflicts), tuple(errors))

    async def _push_keys(self) -> PushReport:
        source = self._keys
        if source is None:
            return PushReport()
        created: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        conflicts: list[str] = []
        errors: list[str] = []
        for spec in await source.keys_for_litellm():
            fields: dict[str, Any] = {
                "models": list(spec.models),
                "max_budget": spec.max_budget,
                "team_id": spec.team_id,
                "user_id": spec.user_id,
            }
            try:
                if spec.litellm_token is None:
                    made = await self._litellm.generate_key(key_alias=f"maaskit:{spec.key_id}", **fields)
                    if made.token is not None:
                        await source.remember_litellm_token(spec.key_id, made.token)
                    created.append(spec.key_id)
                    continue
                remote = await self._litellm.key_info(spec.litellm_token)
                if (
                    set(remote.models) == set(spec.models)
                    and _same_budget(remote.max_budget, spec.max_budget)
                    and remote.team_id == spec.team_id
                ):
                    unchanged.append(spec.key_id)
                    continue
                conflicts.append(spec.key_id)
                if self._policy is ConflictPolicy.LOCAL_WINS:
                    await self._litellm.update_key(spec.litellm_token, **fields)
                    updated.append(spec.key_id)
            except MaasError as exc:
                errors.append(f"{spec.key_id}: {exc.code}")
        return PushReport(tuple(created), tuple(updated), tuple(unchanged), tuple(conflicts), tuple(errors))

    # -- scheduling -----------------------------------------------------------------------

    async def run_scheduled(self) -> FullSyncReport | None:
        """One scheduled round under the cross-replica lease.

        Returns ``None`` when another replica holds the lease (nothing is done). Failures of the
        sync itself are recorded and logged, not raised, so the loop keeps going.
        """
        now = self._clock.now()
        until = now + timedelta(seconds=self._lock_ttl)
        if not await self._lock.acquire(_LOCK_NAME, self._owner, until, now):
            _log.debug("integration.sync_skipped", owner=self._owner)
            return None
        try:
            return await self.full_sync()
        except MaasError:
            return None
        finally:
            await self._lock.release(_LOCK_NAME, self._owner)

    async def start(self) -> None:
        """Start the auto-sync loop (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="maaskit-litellm-sync")

    async def _loop(self) -> None:
        while True:
            await self._sleep(self.next_delay())
            try:
                await self.run_scheduled()
            except MaasError as exc:  # the lock store failing: try again next round
                _log.warning("integration.schedule_failed", error=exc.code)

    async def aclose(self) -> None:
        """Stop the loop; a round in progress is cancelled (its transaction rolls back)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    @property
    def scheduler_running(self) -> bool:
        """Whether the auto-sync loop runs."""
        return self._task is not None and not self._task.done()

    # -- health and audit -----------------------------------------------------------------

    async def integration_health(self) -> IntegrationHealth:
        """The LiteLLM connection, breaker state, last run, failures in a row, scheduler, lease."""
        connection = await self._litellm.test_connection()
        runs = await self._runs.recent(1)
        breaker = getattr(self._litellm, "breaker", None)
        state = getattr(getattr(breaker, "state", None), "value", None)
        holder = await self._lock.holder(_LOCK_NAME, self._clock.now())
        last = runs[0] if runs else None
        healthy = connection.ok and self._failures == 0 and (last is None or last.ok)
        return IntegrationHealth(
            healthy=healthy,
            connection=connection,
            breaker_state=state,
            last_run=last,
            last_success_at=self._last_success,
            consecutive_failures=self._failures,
            scheduler_running=self.scheduler_running,
            lock_holder=holder,
        )

    async def recent_runs(self, limit: int = 20) -> list[SyncRun]:
        """The audit trail, newest first."""
        return await self._runs.recent(limit)

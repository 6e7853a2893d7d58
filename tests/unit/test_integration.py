"""IntegrationService: full sync with team/key push, conflict policy, lease, scheduler, audit, health."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import httpx
import pytest

from maaskit.errors import UpstreamError, ValidationError
from maaskit.services.catalog import ConflictPolicy, DefaultModelCatalog
from maaskit.services.integration import DefaultIntegrationService, KeySpec, TeamSpec
from maaskit.services.litellm import DefaultLiteLLMService, LiteLLMConfig
from maaskit.services.upstream import RetryPolicy
from maaskit.storage.memory.catalog import MemoryCatalogStore, MemorySyncLock, MemorySyncRunStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.catalog import SqlCatalogStore, SqlSyncLock, SqlSyncRunStore
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_litellm import FakeLiteLLM

MASTER = "sk-int-master"


class Teams:
    def __init__(self, specs: Sequence[TeamSpec]) -> None:
        self.specs = list(specs)

    async def teams_for_litellm(self) -> Sequence[TeamSpec]:
        return self.specs


class Keys:
    def __init__(self, specs: Sequence[KeySpec]) -> None:
        self.specs = list(specs)
        self.tokens: dict[str, str] = {}

    async def keys_for_litellm(self) -> Sequence[KeySpec]:
        return [
            KeySpec(s.key_id, s.models, s.max_budget, s.team_id, s.user_id, self.tokens.get(s.key_id))
            for s in self.specs
        ]

    async def remember_litellm_token(self, key_id: str, token: str) -> None:
        self.tokens[key_id] = token


def setup(clock: FakeClock, **kw: Any) -> tuple[FakeLiteLLM, DefaultIntegrationService, DefaultModelCatalog]:
    fake = FakeLiteLLM(master_key=MASTER)
    fake.add_model("gpt-cheap", input_cost_per_token="0.000001", output_cost_per_token="0.000002")
    litellm = DefaultLiteLLMService(
        LiteLLMConfig(base_url=fake.base_url, master_key=MASTER),
        httpx.AsyncClient(transport=fake.httpx_transport()),
        clock=clock,
        retry=RetryPolicy(max_attempts=1),
    )
    catalog = DefaultModelCatalog(kw.pop("store", None) or MemoryCatalogStore(), clock=clock)
    service = DefaultIntegrationService(
        catalog,
        litellm,
        lock=kw.pop("lock", None) or MemorySyncLock(),
        runs=kw.pop("runs", None) or MemorySyncRunStore(),
        clock=clock,
        **kw,
    )
    return fake, service, catalog


async def test_full_sync_models_then_teams_and_keys(clock: FakeClock) -> None:
    teams = Teams([TeamSpec("t1", "Team one", ("gpt-cheap",), Decimal(10))])
    keys = Keys([KeySpec("k1", ("gpt-cheap",), Decimal(5), "t1")])
    fake, service, _catalog = setup(clock, teams=teams, keys=keys)
    report = await service.full_sync()
    assert report.models.added == ("gpt-cheap",)
    assert report.teams.created == ("t1",)
    assert report.keys.created == ("k1",)
    assert fake.teams["t1"]["max_budget"] == Decimal(10)
    assert [r["key_alias"] for r in fake.keys.values()] == ["maaskit:k1"]
    again = await service.full_sync()
    assert again.models.rows_written == 0
    assert again.teams.unchanged == ("t1",)
    assert again.keys.unchanged == ("k1",)
    runs = await service.recent_runs()
    assert [r.ok for r in runs] == [True, True]
    assert runs[0].summary["models"]["unchanged"] == 1


@pytest.mark.parametrize("policy", list(ConflictPolicy))
async def test_team_conflict_policy(clock: FakeClock, policy: ConflictPolicy) -> None:
    teams = Teams([TeamSpec("t1", "Team", ("gpt-cheap",), Decimal(10))])
    fake, service, _ = setup(clock, teams=teams, policy=policy)
    await service.full_sync()
    fake.teams["t1"]["max_budget"] = Decimal(99)  # changed in LiteLLM's UI
    report = await service.full_sync()
    assert report.teams.conflicts == ("t1",)
    expected = Decimal(10) if policy is ConflictPolicy.LOCAL_WINS else Decimal(99)
    assert fake.teams["t1"]["max_budget"] == expected


async def test_failed_sync_is_audited_and_raised(clock: FakeClock) -> None:
    fake, service, catalog = setup(clock)
    await service.full_sync()
    fake.html_next()
    with pytest.raises(UpstreamError):
        await service.full_sync()
    runs = await service.recent_runs()
    assert runs[0].ok is False
    assert runs[0].error_code == "litellm.invalid_response"
    assert (await catalog.require_available("gpt-cheap")).available  # unchanged
    health = await service.integration_health()
    assert health.consecutive_failures == 1
    assert not health.healthy
    await service.full_sync()
    assert (await service.integration_health()).healthy


async def test_lease_makes_scheduled_runs_single_flight(sql_db: Database, clock: FakeClock) -> None:
    lock = SqlSyncLock(sql_db)
    runs = SqlSyncRunStore(sql_db)
    store = SqlCatalogStore(sql_db)
    _, first, _ = setup(clock, lock=lock, runs=runs, store=store, owner="replica-a", lock_ttl=60)
    _, second, _ = setup(clock, lock=lock, runs=runs, store=store, owner="replica-b", lock_ttl=60)
    now = clock.now()
    from datetime import timedelta

    assert await lock.acquire("litellm_sync", "replica-a", now + timedelta(seconds=60), now)
    assert await second.run_scheduled() is None  # a holds it
    assert await lock.holder("litellm_sync", now) == "replica-a"
    clock.advance(61)  # a's lease expired (a crashed)
    assert await second.run_scheduled() is not None
    assert await lock.holder("litellm_sync", clock.now()) is None  # released after the run
    clock.advance(1)
    assert await first.run_scheduled() is not None
    recorded = await runs.recent()
    assert [r.owner for r in recorded] == ["replica-a", "replica-b"]
    assert all(r.ok for r in recorded)


@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"])
async def test_sql_lock_acquire_is_exclusive_under_concurrency(
    backend: str, request: pytest.FixtureRequest, tmp_path: Any, clock: FakeClock
) -> None:
    """Real replicas share a database file or server (an in-memory SQLite is one shared connection)."""
    from datetime import timedelta

    if backend == "postgres":
        sql_db = Database(request.getfixturevalue("postgres_url"))
    else:
        sql_db = Database(f"sqlite+aiosqlite:///{tmp_path}/lock.db")
    await sql_db.migrate()
    lock = SqlSyncLock(sql_db)
    now = clock.now()
    results = await asyncio.gather(
        *(lock.acquire("l", f"o{i}", now + timedelta(seconds=30), now) for i in range(8))
    )
    assert sum(results) == 1
    winner = await lock.holder("l", now)
    assert winner is not None
    assert await lock.acquire("l", winner, now + timedelta(seconds=60), now)  # renew
    await lock.release("l", "someone-else")
    assert await lock.holder("l", now) == winner
    await lock.release("l", winner)
    assert await lock.holder("l", now) is None
    if backend == "postgres":
        await sql_db.downgrade("base")
    await sql_db.aclose()


async def test_scheduler_runs_every_interval_with_jitter(clock: FakeClock) -> None:
    waits: list[float] = []
    gate: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await gate.get()

    _, service, _ = setup(clock, interval=100, jitter=0.2, sleep=sleep, rng=random.Random(7))
    await service.start()
    await service.start()  # idempotent
    for done in (1, 2):
        gate.put_nowait(None)
        while len(await service.recent_runs()) < done:
            await asyncio.sleep(0)
    assert service.scheduler_running
    await service.aclose()
    assert not service.scheduler_running
    assert len(await service.recent_runs()) == 2
    assert len(waits) == 3  # third round waiting when closed
    assert all(80 <= w <= 120 for w in waits)
    assert len(set(waits)) == len(waits)  # jittered


def test_invalid_configuration_is_refused(clock: FakeClock) -> None:
    for bad in ({"interval": 0}, {"jitter": 1.5}, {"lock_ttl": -1}):
        with pytest.raises(ValidationError):
            setup(clock, **bad)


async def test_health_reports_connection_and_breaker(clock: FakeClock) -> None:
    _, service, _ = setup(clock)
    health = await service.integration_health()
    assert health.connection.ok
    assert health.breaker_state == "closed"
    assert health.last_run is None
    assert health.healthy

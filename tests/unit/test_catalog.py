"""ModelCatalog: incremental one-transaction sync, unavailability, local edits, integrity, pricing, SQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import ConflictError, NotFoundError, UnavailableError, UpstreamError, ValidationError
from maaskit.services.catalog import (
    CatalogModel,
    CatalogPricing,
    ConflictPolicy,
    DefaultModelCatalog,
)
from maaskit.services.litellm import ModelInfo, ModelProblem, ModelSnapshot
from maaskit.services.pricing import PricingService
from maaskit.storage.memory.catalog import MemoryCatalogStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.catalog import SqlCatalogStore, price_from_e18, price_to_e18
from maaskit.testing.clock import FakeClock


def info(name: str, inp: str | None = "0.000001", out: str | None = "0.000002", **kw: Any) -> ModelInfo:
    return ModelInfo(
        name,
        provider="openai",
        input_cost_per_token=Decimal(inp) if inp is not None else None,
        output_cost_per_token=Decimal(out) if out is not None else None,
        **kw,
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryCatalogStore()
    db: Database = request.getfixturevalue(f"{request.param}_db")
    return SqlCatalogStore(db)


class StatementCounter:
    """Counts INSERT/UPDATE/DELETE statements sent to the database (SQLAlchemy event)."""

    def __init__(self, db: Database) -> None:
        self.writes = 0
        self.fail_on: str | None = None
        sa.event.listen(db.engine.sync_engine, "before_cursor_execute", self._on)

    def _on(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        verb = statement.lstrip().split(" ", 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE"):
            self.writes += 1
            if self.fail_on == verb:
                raise RuntimeError("injected failure mid-sync")


async def test_sync_adds_then_noop_writes_nothing(store: Any, clock: FakeClock) -> None:
    catalog = DefaultModelCatalog(store, clock=clock)
    models = [info(f"m{i}") for i in range(20)]
    first = await catalog.sync_models(models)
    assert len(first.added) == 20
    assert first.rows_written == 20
    second = await catalog.sync_models(models)
    assert second.rows_written == 0
    assert len(second.unchanged) == 20
    assert second.added == second.updated == second.unavailable == ()


async def test_noop_sync_sends_no_write_statement(sql_db: Database) -> None:
    catalog = DefaultModelCatalog(SqlCatalogStore(sql_db))
    models = [info(f"m{i}") for i in range(50)]
    await catalog.sync_models(models)
    counter = StatementCounter(sql_db)
    await catalog.sync_models(models)
    assert counter.writes == 0
    changed = [*models[:49], info("m49", inp="0.000009")]
    report = await catalog.sync_models(changed)
    assert report.updated == ("m49",)
    assert report.rows_written == 1
    assert counter.writes == 1  # one UPDATE statement for the one changed row


async def test_a_failure_mid_sync_leaves_the_catalog_unchanged(sql_db: Database) -> None:
    catalog = DefaultModelCatalog(SqlCatalogStore(sql_db))
    await catalog.sync_models([info("a"), info("b")])
    before = await catalog.list_models()
    counter = StatementCounter(sql_db)
    counter.fail_on = "UPDATE"  # the INSERT of "c" runs first, then the UPDATE fails
    with pytest.raises(RuntimeError):
        await catalog.sync_models([info("a", inp="0.5"), info("c")])
    counter.fail_on = None
    assert await catalog.list_models() == before


async def test_memory_store_failure_mid_apply_changes_nothing() -> None:
    class Failing(MemoryCatalogStore):
        calls = 0

        def _write(self, target: dict[str, CatalogModel], model: CatalogModel) -> None:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("injected")
            super()._write(target, model)

    store = Failing()
    catalog = DefaultModelCatalog(store)
    await catalog.sync_models([info("a"), info("b")])
    before = await catalog.list_models()
    with pytest.raises(RuntimeError):
        await catalog.sync_models([info("a", inp="0.5"), info("c"), info("b", inp="0.4")])
    assert await catalog.list_models() == before


async def test_gone_models_become_unavailable_and_come_back(store: Any, clock: FakeClock) -> None:
    catalog = DefaultModelCatalog(store, clock=clock)
    await catalog.sync_models([info("keep"), info("gone")])
    report = await catalog.sync_models([info("keep")])
    assert report.unavailable == ("gone",)
    gone = await catalog.get("gone")
    assert gone is not None
    assert not gone.available
    assert gone.unavailable_since == clock.now()
    with pytest.raises(UnavailableError) as err:
        await catalog.require_available("gone")
    assert err.value.code == "model.unavailable"
    with pytest.raises(NotFoundError):
        await catalog.require_available("never")
    assert (await catalog.require_available("keep")).model_id == "keep"
    quiet = await catalog.sync_models([info("keep")])
    assert quiet.rows_written == 0  # already unavailable: nothing to write
    back = await catalog.sync_models([info("keep"), info("gone")])
    assert back.restored == ("gone",)
    assert (await catalog.require_available("gone")).available


async def test_mark_unavailable_keeps_rows(store: Any) -> None:
    catalog = DefaultModelCatalog(store)
    await catalog.sync_models([info("a"), info("b")])
    assert await catalog.mark_unavailable(["a", "unknown"]) == ("a",)
    assert await catalog.mark_unavailable(["a"]) == ()
    assert [m.model_id for m in await catalog.list_models()] == ["a", "b"]
    assert [m.model_id for m in await catalog.list_models(available_only=True)] == ["b"]
    assert await catalog.mark_available(["a"]) == ("a",)


async def test_hostile_source_aborts_without_writing(store: Any) -> None:
    catalog = DefaultModelCatalog(store)
    await catalog.sync_models([info("a")])
    hostile = ModelSnapshot((info("b"),), (ModelProblem(1, "x", "input_cost_per_token: negative"),))
    with pytest.raises(UpstreamError) as err:
        await catalog.sync_models(hostile)
    assert err.value.code == "catalog.invalid_source"
    assert [m.model_id for m in await catalog.list_models()] == ["a"]
    report = await catalog.sync_models(hostile, on_invalid="skip")
    assert report.added == ("b",)
    assert report.errors == ("#1 x: input_cost_per_token: negative",)
    with pytest.raises(UpstreamError):
        await catalog.sync_models([info("a"), info("a")])


async def test_fallback_snapshot_never_marks_models_unavailable(store: Any) -> None:
    catalog = DefaultModelCatalog(store)
    await catalog.sync_models([info("real")])
    report = await catalog.sync_models(ModelSnapshot((info("dev"),), source="fallback", is_fallback=True))
    assert report.unavailable == ()
    assert report.added == ("dev",)
    assert (await catalog.require_available("real")).available


@pytest.mark.parametrize("policy", list(ConflictPolicy))
async def test_conflict_policies(store: Any, policy: ConflictPolicy) -> None:
    catalog = DefaultModelCatalog(store)
    await catalog.sync_models([info("m", max_input_tokens=1000)])
    edited = await catalog.update_model_metadata(
        "m", input_price=Decimal("0.000005"), capabilities=["vision"]
    )
    assert edited.local_overrides == {"input_price", "capabilities"}
    report = await catalog.sync_models([info("m", inp="0.000007", max_input_tokens=2000)], policy=policy)
    assert report.conflicts == ("m: input_price", "m: capabilities")
    model = await catalog.get("m")
    assert model is not None
    if policy is ConflictPolicy.REMOTE_WINS:
        assert model.input_price == Decimal("0.000007")
        assert model.local_overrides == frozenset()
        assert model.context_window == 2000
    elif policy is ConflictPolicy.LOCAL_WINS:
        assert model.input_price == Decimal("0.000005")
        assert model.capabilities == {"vision"}
        assert model.context_window == 2000
    else:
        assert model == edited  # untouched, only reported
        assert report.rows_written == 0


async def test_update_model_metadata_validates_and_writes_nothing_on_error(store: Any) -> None:
    catalog = DefaultModelCatalog(store)
    await catalog.sync_models([info("m")])
    before = await catalog.get("m")
    for bad in (
        {"input_price": Decimal("-1")},
        {"input_price": Decimal("NaN")},
        {"output_price": Decimal(5)},
        {"context_window": -3},
        {"capabilities": ["Bad Cap"]},
    ):
        with pytest.raises(ValidationError):
            await catalog.update_model_metadata("m", **bad)
    assert await catalog.get("m") == before
    with pytest.raises(NotFoundError):
        await catalog.update_model_metadata("nope", input_price=Decimal(0))
    written = store.rows_written
    assert await catalog.update_model_metadata("m") == before  # nothing asked: nothing written
    assert store.rows_written == written


async def test_validate_integrity(store: Any) -> None:
    catalog = DefaultModelCatalog(store)
    await catalog.sync_models([info("GPT"), info("gpt"), info("old")])
    await catalog.mark_unavailable(["old"])

    async def subscriptions() -> list[tuple[str, str]]:
        return [("sub-1", "gpt"), ("sub-2", "deleted-model"), ("key-9", "old")]

    report = await catalog.validate_integrity([subscriptions])
    kinds = {(i.kind, i.model_id) for i in report.issues}
    assert ("duplicate", "gpt") in kinds
    assert ("dangling_reference", "deleted-model") in kinds
    assert ("unavailable_reference", "old") in kinds
    assert not report.ok


async def test_catalog_pricing_reads_the_snapshot(store: Any) -> None:
    catalog = DefaultModelCatalog(store)
    pricing = CatalogPricing(catalog)
    assert isinstance(pricing, PricingService)
    assert pricing.price("m") is None
    await catalog.sync_models([info("m", inp="0.00000015", out="0.0000006"), info("free", None, None)])
    assert pricing.cost_micros("m", 1000, 500) == 450
    assert pricing.max_cost_micros("m", 1000, 1000) == 750
    assert pricing.price("free") is None
    with pytest.raises(NotFoundError):
        pricing.cost_micros("free", 1, 1)
    await catalog.update_model_metadata("m", output_price=Decimal("0.000001"))
    assert pricing.cost_micros("m", 1000, 500) == 650  # refreshed after the edit
    await catalog.mark_unavailable(["m"])
    assert pricing.price("m") is not None  # in-flight requests are still billed


async def test_snapshot_refreshes_after_ttl_for_other_replicas(clock: FakeClock) -> None:
    store = MemoryCatalogStore()
    mine = DefaultModelCatalog(store, clock=clock, snapshot_ttl=30)
    other = DefaultModelCatalog(store, clock=clock, snapshot_ttl=30)
    await mine.sync_models([info("m")])
    await other.require_available("m")
    await mine.mark_unavailable(["m"])
    assert (await other.require_available("m")).model_id == "m"  # stale within the TTL
    clock.advance(31)
    with pytest.raises(UnavailableError):
        await other.require_available("m")


async def test_sql_store_conflicts_on_concurrent_insert(sql_db: Database) -> None:
    store = SqlCatalogStore(sql_db)
    model = CatalogModel("m", created_at=FakeClock().now(), updated_at=FakeClock().now())
    await store.apply([model], [])
    with pytest.raises(ConflictError):
        await store.apply([model], [])


async def test_prices_round_trip_through_sql_exactly(sql_db: Database) -> None:
    catalog = DefaultModelCatalog(SqlCatalogStore(sql_db))
    prices = ["0.000000000000000001", "1", "0.0000000125", "0", "0.123456789012345678"]
    await catalog.sync_models([info(f"m{i}", p, p) for i, p in enumerate(prices)])
    got = {m.model_id: m.input_price for m in await catalog.list_models()}
    assert got == {f"m{i}": Decimal(p) for i, p in enumerate(prices)}


@given(st.decimals(min_value=0, max_value=1, places=18, allow_nan=False))
def test_price_e18_round_trip(value: Decimal) -> None:
    stored = price_to_e18(value)
    assert stored is not None
    assert 0 <= stored <= 10**18 < 2**63
    assert price_from_e18(stored) == value


async def test_migration_upgrades_and_downgrades(sql_db: Database) -> None:
    async with sql_db.connect() as conn:
        names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert {"maaskit_catalog_models", "maaskit_sync_locks", "maaskit_sync_runs"} <= names
    await sql_db.downgrade("base")
    async with sql_db.connect() as conn:
        names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert not names & {"maaskit_catalog_models", "maaskit_sync_locks", "maaskit_sync_runs"}
    await sql_db.migrate()

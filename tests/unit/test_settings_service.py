"""SettingsService: dynamic overrides over memory, SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from maaskit.errors import UnavailableError, ValidationError
from maaskit.services.settings import (
    STATIC_SETTINGS,
    DefaultSettingsService,
    SettingOverride,
    SettingsService,
)
from maaskit.settings import Settings, secret_setting_names
from maaskit.storage.memory.settings import MemorySettingOverrideStore
from maaskit.storage.ports.settings import OverrideRecord, SettingOverrideStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.settings import SqlSettingOverrideStore
from maaskit.testing.clock import FakeClock

SECRET = "s" * 40


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` for the memory store, else a database URL (resolved outside the event loop)."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///:memory:"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[SettingOverrideStore]:
    if store_url is None:
        yield MemorySettingOverrideStore()
        return
    db = Database(store_url)
    await db.migrate()
    yield SqlSettingOverrideStore(db)
    if db.dialect == "postgresql":
        await db.downgrade("base")
    await db.aclose()


@pytest.fixture
def base() -> Settings:
    return Settings(signing_secret=SECRET, key_cache_ttl=60.0)


@pytest.fixture
async def service(base: Settings, store: SettingOverrideStore, clock: FakeClock) -> DefaultSettingsService:
    svc = DefaultSettingsService(base, store, clock=clock)
    assert await svc.reload() == frozenset()
    return svc


async def test_conforms_to_protocol(service: DefaultSettingsService) -> None:
    assert isinstance(service, SettingsService)


async def test_starts_with_the_base_settings(service: DefaultSettingsService, base: Settings) -> None:
    assert service.current() == base
    assert service.base is base
    assert service.overrides() == {}
    assert service.get("key_cache_ttl") == 60.0


async def test_set_override_applies_validates_and_normalises(
    service: DefaultSettingsService, store: SettingOverrideStore, clock: FakeClock
) -> None:
    await service.set_override("key_cache_ttl", "90", actor="admin")
    assert service.get("key_cache_ttl") == 90.0
    assert service.current().key_cache_ttl == 90.0
    assert service.base.key_cache_ttl == 60.0
    assert service.overrides() == {
        "key_cache_ttl": SettingOverride("key_cache_ttl", 90.0, clock.now(), "admin"),
    }
    [record] = await store.load_all()
    assert (record.name, json.loads(record.value_json), record.updated_by) == ("key_cache_ttl", 90.0, "admin")
    assert record.updated_at == clock.now()


async def test_another_replica_picks_up_overrides_on_reload(
    service: DefaultSettingsService, store: SettingOverrideStore, base: Settings, clock: FakeClock
) -> None:
    other = DefaultSettingsService(base, store, clock=clock)
    seen: list[tuple[str, Any, Any]] = []
    other.on_change(lambda name, old, new: seen.append((name, old, new)))
    await service.set_override("log_level", "debug")
    await service.set_override("upstream_max_retries", 5)
    assert other.get("log_level") == "info"
    assert await other.reload() == {"log_level", "upstream_max_retries"}
    assert other.current() == service.current()
    assert sorted(seen) == [("log_level", "info", "debug"), ("upstream_max_retries", 2, 5)]
    assert await other.reload() == frozenset()
    await service.clear_override("log_level")
    assert await other.reload() == {"log_level"}
    assert other.get("log_level") == "info"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("key_cache_ttl", -5),
        ("key_cache_ttl", "soon"),
        ("log_level", "verbose"),
        ("upstream_url", "ftp://example.com"),
        ("upstream_max_retries", 99),
        ("session_idle_timeout", 10**9),  # breaks idle <= absolute
    ],
)
async def test_invalid_value_raises_and_writes_nothing(
    service: DefaultSettingsService, store: SettingOverrideStore, base: Settings, name: str, value: Any
) -> None:
    calls: list[str] = []
    service.on_change(lambda n, old, new: calls.append(n))
    with pytest.raises(ValidationError) as exc:
        await service.set_override(name, value)
    assert exc.value.code == "settings.invalid_value"
    assert exc.value.params["setting"] == name
    assert name in str(exc.value)
    assert await store.load_all() == []
    assert service.current() == base
    assert calls == []


async def test_unknown_setting(service: DefaultSettingsService) -> None:
    for call in (
        lambda: service.set_override("no_such_setting", 1),
        lambda: service.clear_override("no_such_setting"),
    ):
        with pytest.raises(ValidationError) as exc:
            await call()
        assert exc.value.code == "settings.unknown"
    with pytest.raises(ValidationError) as exc:
        service.get("no_such_setting")
    assert exc.value.code == "settings.unknown"
    assert "no_such_setting" in str(exc.value)


@pytest.mark.parametrize("name", secret_setting_names())
async def test_secrets_cannot_be_overridden(
    service: DefaultSettingsService, store: SettingOverrideStore, name: str
) -> None:
    value = "x" * 48
    with pytest.raises(ValidationError) as exc:
        await service.set_override(name, value)
    assert exc.value.code == "settings.secret_not_dynamic"
    assert f"MAASKIT_{name.upper()}" in str(exc.value)
    assert value not in str(exc.value)
    assert value not in repr(exc.value)
    assert await store.load_all() == []


@pytest.mark.parametrize("name", sorted(STATIC_SETTINGS))
async def test_static_settings_cannot_be_overridden(
    service: DefaultSettingsService, store: SettingOverrideStore, name: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        await service.set_override(name, getattr(service.base, name))
    assert exc.value.code == "settings.static"
    assert await store.load_all() == []


async def test_secret_values_are_readable_only_masked(service: DefaultSettingsService) -> None:
    value = service.get("signing_secret")
    assert SECRET not in repr(value)
    assert SECRET not in str(value)
    assert value.get_secret_value() == SECRET


@pytest.mark.parametrize("actor", ["", "a" * 257, 42])
async def test_invalid_actor(
    service: DefaultSettingsService, store: SettingOverrideStore, actor: Any
) -> None:
    with pytest.raises(ValidationError) as exc:
        await service.set_override("log_level", "debug", actor=actor)
    assert exc.value.code == "settings.invalid_actor"
    assert await store.load_all() == []


async def test_clear_override(service: DefaultSettingsService, store: SettingOverrideStore) -> None:
    seen: list[tuple[str, Any, Any]] = []
    service.on_change(lambda name, old, new: seen.append((name, old, new)))
    await service.set_override("default_max_tokens", 100)
    assert await service.clear_override("default_max_tokens") is True
    assert service.get("default_max_tokens") == 4096
    assert service.overrides() == {}
    assert await store.load_all() == []
    assert await service.clear_override("default_max_tokens") is False
    assert seen == [("default_max_tokens", 4096, 100), ("default_max_tokens", 100, 4096)]


async def test_clear_override_refuses_to_leave_invalid_settings(service: DefaultSettingsService) -> None:
    # absolute timeout lowered first, then idle lowered below it; clearing "idle" would leave
    # the base idle timeout (1800) above the overridden absolute timeout (600).
    await service.set_override("session_idle_timeout", 300)
    await service.set_override("session_absolute_timeout", 600)
    with pytest.raises(ValidationError) as exc:
        await service.clear_override("session_idle_timeout")
    assert exc.value.code == "settings.invalid_value"
    assert set(service.overrides()) == {"session_idle_timeout", "session_absolute_timeout"}


async def test_callbacks_run_after_commit_sync_and_async(
    service: DefaultSettingsService, store: SettingOverrideStore
) -> None:
    seen: list[tuple[str, Any, Any, list[str]]] = []

    def sync_cb(name: str, old: Any, new: Any) -> None:
        seen.append(("sync", old, new, []))

    async def async_cb(name: str, old: Any, new: Any) -> None:
        committed = [r.name for r in await store.load_all()]
        seen.append(("async", old, new, committed))

    service.on_change(sync_cb)
    service.on_change(async_cb)
    await service.set_override("usage_flush_interval", 5)
    assert seen == [("sync", 1.0, 5.0, []), ("async", 1.0, 5.0, ["usage_flush_interval"])]


async def test_no_callback_when_the_effective_value_does_not_change(service: DefaultSettingsService) -> None:
    calls: list[str] = []
    service.on_change(lambda name, old, new: calls.append(name))
    await service.set_override("log_level", "info")  # equal to the base value
    assert calls == []
    assert "log_level" in service.overrides()


async def test_failing_callback_is_logged_not_propagated(service: DefaultSettingsService) -> None:
    after: list[str] = []

    def broken(name: str, old: Any, new: Any) -> None:
        raise RuntimeError("boom")

    async def broken_async(name: str, old: Any, new: Any) -> None:
        raise RuntimeError("async boom")

    service.on_change(broken)
    service.on_change(broken_async)
    service.on_change(lambda name, old, new: after.append(name))
    with capture_logs() as logs:
        await service.set_override("log_level", "debug")
    assert service.get("log_level") == "debug"
    assert after == ["log_level"]
    failures = [e for e in logs if e["event"] == "settings.callback_failed"]
    assert len(failures) == 2
    assert all(e["setting"] == "log_level" and e["log_level"] == "error" for e in failures)
    assert "debug" not in json.dumps([{k: str(v) for k, v in e.items() if k != "event"} for e in failures])


async def test_unsubscribe_is_idempotent(service: DefaultSettingsService) -> None:
    calls: list[str] = []

    def cb(name: str, old: Any, new: Any) -> None:
        calls.append(name)

    first = service.on_change(cb)
    service.on_change(cb)  # the same function twice: two subscriptions
    first()
    first()
    await service.set_override("log_level", "debug")
    assert calls == ["log_level"]
    with pytest.raises(TypeError):
        service.on_change("not callable")  # type: ignore[arg-type]


async def test_reload_skips_stored_rows_that_are_not_acceptable(
    store: SettingOverrideStore, base: Settings, clock: FakeClock
) -> None:
    now = clock.now()
    for name, value_json in [
        ("log_level", '"warning"'),
        ("no_such_setting", "1"),
        ("signing_secret", json.dumps("y" * 40)),
        ("database_url", '"sqlite+aiosqlite:///other.db"'),
        ("key_cache_ttl", "{not json"),
        ("upstream_max_retries", "-3"),
    ]:
        await store.put(OverrideRecord(name, value_json, now, None))
    service = DefaultSettingsService(base, store, clock=clock)
    with capture_logs() as logs:
        assert await service.reload() == {"log_level"}
    assert set(service.overrides()) == {"log_level"}
    assert service.current() == base.with_changes(log_level="warning")
    ignored = sorted(e["setting"] for e in logs if e["event"] == "settings.override_ignored")
    assert ignored == [
        "database_url",
        "key_cache_ttl",
        "no_such_setting",
        "signing_secret",
        "upstream_max_retries",
    ]
    assert "y" * 40 not in repr(logs)


async def test_store_failure_leaves_state_unchanged(base: Settings, clock: FakeClock) -> None:
    class DownStore(MemorySettingOverrideStore):
        async def put(self, record: OverrideRecord) -> None:
            raise UnavailableError("database.unavailable")

    service = DefaultSettingsService(base, DownStore(), clock=clock)
    calls: list[str] = []
    service.on_change(lambda name, old, new: calls.append(name))
    with pytest.raises(UnavailableError):
        await service.set_override("log_level", "debug")
    assert service.current() == base
    assert service.overrides() == {}
    assert calls == []


async def test_overwriting_an_override_updates_time_and_actor(
    service: DefaultSettingsService, store: SettingOverrideStore, clock: FakeClock
) -> None:
    await service.set_override("log_level", "debug", actor="alice")
    clock.advance(minutes=5)
    await service.set_override("log_level", "error", actor="bob")
    [record] = await store.load_all()
    assert (json.loads(record.value_json), record.updated_by) == ("error", "bob")
    assert record.updated_at == clock.now()
    assert service.overrides()["log_level"].updated_at - timedelta(minutes=5) < clock.now()


async def test_concurrent_overrides_keep_state_consistent(
    service: DefaultSettingsService, store: SettingOverrideStore, base: Settings, clock: FakeClock
) -> None:
    await asyncio.gather(*(service.set_override("default_max_tokens", n) for n in range(1, 21)))
    fresh = DefaultSettingsService(base, store, clock=clock)
    await fresh.reload()
    assert fresh.current() == service.current()


# -- property: any sequence of valid operations equals base.with_changes(overrides) ----------------

_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"), st.just("log_level"), st.sampled_from(["debug", "info", "warning", "error"])
        ),
        st.tuples(st.just("set"), st.just("default_max_tokens"), st.integers(1, 100_000)),
        st.tuples(st.just("set"), st.just("key_cache_ttl"), st.floats(0.001, 1e6)),
        st.tuples(
            st.just("clear"), st.sampled_from(["log_level", "default_max_tokens", "key_cache_ttl"]), st.none()
        ),
    ),
    max_size=15,
)


@settings(max_examples=50, deadline=None)
@given(ops=_OPS)
def test_property_effective_settings_equal_base_with_overrides(ops: list[tuple[str, str, Any]]) -> None:
    async def run() -> None:
        base = Settings()
        store = MemorySettingOverrideStore()
        service = DefaultSettingsService(base, store, clock=FakeClock())
        expected: dict[str, Any] = {}
        changes: list[str] = []
        service.on_change(lambda name, old, new: changes.append(name))
        for op, name, value in ops:
            before = getattr(service.current(), name)
            if op == "set":
                await service.set_override(name, value)
                expected[name] = value
            else:
                await service.clear_override(name)
                expected.pop(name, None)
            changed = before != getattr(service.current(), name)
            assert (changes[-1:] == [name]) if changed else True
        assert service.current() == base.with_changes(**expected)
        replica = DefaultSettingsService(base, store, clock=FakeClock())
        await replica.reload()
        assert replica.current() == service.current()

    asyncio.run(run())


# -- migration ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    # resolved in a sync fixture: conftest's postgres_url runs its own event loop
    if request.param == "sqlite":
        return "sqlite+aiosqlite:///:memory:"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_migration_matches_the_table_and_downgrades(db_url: str) -> None:
    def diff(conn: sa.Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(ctx, metadata) if "maaskit_setting_overrides" in repr(d)]

    def tables(conn: sa.Connection) -> set[str]:
        return set(sa.inspect(conn).get_table_names())

    db = Database(db_url)
    try:
        await db.migrate()
        async with db.connect() as conn:
            assert await conn.run_sync(diff) == []
            assert "maaskit_setting_overrides" in await conn.run_sync(tables)
        await db.downgrade("base")
        async with db.connect() as conn:
            assert "maaskit_setting_overrides" not in await conn.run_sync(tables)
    finally:
        await db.downgrade("base")
        await db.aclose()

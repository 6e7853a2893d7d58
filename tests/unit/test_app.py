from typing import Any

import pytest

import maaskit
from maaskit.app import BackgroundService
from maaskit.clock import Clock
from maaskit.errors import MaasError
from maaskit.registry import Registry
from maaskit.services.cache import CacheService
from maaskit.storage.sql.database import Database
from maaskit.testing import FakeClock, build_test_app, test_settings


async def test_create_app_lifecycle_migrates_and_reports_health() -> None:
    app = maaskit.create_app(test_settings())
    assert not app.started
    async with app:
        assert app.started
        assert await app.database.current_revisions() == Database.head_revisions()
        report = await app.health()
        assert report.ok
        assert "Database" in {c.name for c in report.checks}
    assert not app.started


async def test_build_test_app_uses_a_fake_clock_and_overrides() -> None:
    class OneCache:
        async def ping(self) -> None:
            return None

    cache: Any = OneCache()
    async with build_test_app(overrides={CacheService: cache}) as app:
        assert isinstance(app.clock, FakeClock)
        assert app.get(CacheService) is cache


async def test_user_services_are_registered_with_configure() -> None:
    class Greeter:
        def __init__(self, clock: Clock) -> None:
            self.clock = clock

    def configure(registry: Registry) -> None:
        registry.register_class(Greeter)

    async with build_test_app(configure=configure) as app:
        greeter = await app.aget(Greeter)
        assert greeter.clock is app.clock


def test_configure_with_a_missing_dependency_fails_at_build_time() -> None:
    class Needs:
        def __init__(self, missing: "MissingThing") -> None:
            pass

    class MissingThing:
        pass

    def configure(registry: Registry) -> None:
        registry.register_class(Needs)

    with pytest.raises(MaasError) as info:
        build_test_app(configure=configure)
    assert "MissingThing" in str(info.value)


async def test_background_services_start_and_stop() -> None:
    events: list[str] = []

    class Worker:
        async def start(self) -> None:
            events.append("start")

        async def aclose(self) -> None:
            events.append("stop")

    assert isinstance(Worker(), BackgroundService)
    from maaskit import wiring

    original = wiring.eager_services

    def eager(settings: Any) -> tuple[type[Any], ...]:
        return (*original(settings), Worker)

    wiring.eager_services = eager  # type: ignore[assignment]
    try:
        async with build_test_app(configure=lambda r: r.register_class(Worker)):
            assert events == ["start"]
    finally:
        wiring.eager_services = original  # type: ignore[assignment]
    assert events == ["start", "stop"]


def test_blocking_bridge_runs_the_app_on_one_loop_thread() -> None:
    from maaskit.sync import BlockingApp

    with BlockingApp(test_settings()) as bridge:
        report = bridge.call(bridge.app.health)
        assert report.ok
    with pytest.raises(RuntimeError):
        bridge.app  # noqa: B018

"""Registry speed against svcs and dishka (pytest-benchmark).

Run: ``.venv/bin/pytest tests/bench/test_registry_bench.py --benchmark-enable``

Every benchmark times a batch of operations (``APP_OPS`` lookups, ``REQUEST_OPS`` request scopes)
so the harness's own call overhead does not dominate sub-microsecond operations; async batches run
inside one event loop. Divide the reported times by the batch size for the time per operation
(each benchmark also records it as ``extra_info["per_op_us_mean"/"per_op_us_median"]``).

Shapes, the same for every library: ``Settings`` (a ready value) <- ``Service`` (app lifetime,
already built) <- ``Unit`` (request lifetime, new per request, depends on ``Service``).
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import svcs
from dishka import Provider, Scope, make_async_container, make_container

from maaskit.registry import Lifetime, Registry

APP_OPS = 1000
REQUEST_OPS = 100


class Settings:
    pass


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


class Unit:
    def __init__(self, service: Service) -> None:
        self.service = service


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run(benchmark: Any, fn: Callable[[], object], ops: int) -> None:
    benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["ops_per_call"] = ops
        benchmark.extra_info["per_op_us_mean"] = stats.stats.mean / ops * 1e6
        benchmark.extra_info["per_op_us_median"] = stats.stats.median / ops * 1e6


def run_async(
    benchmark: Any, loop: asyncio.AbstractEventLoop, batch: Callable[[], Awaitable[None]], ops: int
) -> None:
    run(benchmark, lambda: loop.run_until_complete(batch()), ops)


# --------------------------------------------------------------------------- setups


def maaskit_registry() -> Registry:
    registry = Registry()
    registry.register_value(Settings, Settings())
    registry.register_class(Service)
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    registry.validate()
    registry.get(Service)
    return registry


def svcs_registry() -> svcs.Registry:
    registry = svcs.Registry()
    registry.register_value(Settings, Settings())
    registry.register_value(Service, Service(Settings()))  # svcs' way to share one app instance

    def unit(svcs_container: svcs.Container) -> Unit:
        return Unit(svcs_container.get(Service))

    registry.register_factory(Unit, unit)
    return registry


def dishka_provider() -> Provider:
    provider = Provider()
    provider.provide(Settings, scope=Scope.APP)
    provider.provide(Service, scope=Scope.APP)
    provider.provide(Unit, scope=Scope.REQUEST)
    return provider


# --------------------------------------------------------------------------- app-scoped lookups


@pytest.mark.benchmark(group="app-get")
def test_app_get_maaskit(benchmark: Any) -> None:
    registry = maaskit_registry()
    get = registry.get
    service = get(Service)

    def batch() -> None:
        for _ in range(APP_OPS):
            get(Service)

    run(benchmark, batch, APP_OPS)
    assert get(Service) is service


@pytest.mark.benchmark(group="app-get")
def test_app_aget_maaskit(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    registry = maaskit_registry()
    aget = registry.aget

    async def batch() -> None:
        for _ in range(APP_OPS):
            await aget(Service)

    run_async(benchmark, loop, batch, APP_OPS)
    assert loop.run_until_complete(aget(Service)) is registry.get(Service)


@pytest.mark.benchmark(group="app-get")
def test_app_get_svcs(benchmark: Any) -> None:
    container = svcs.Container(svcs_registry())
    get = container.get
    service = get(Service)

    def batch() -> None:
        for _ in range(APP_OPS):
            get(Service)

    run(benchmark, batch, APP_OPS)
    assert get(Service) is service


@pytest.mark.benchmark(group="app-get")
def test_app_aget_svcs(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    container = svcs.Container(svcs_registry())
    aget = container.aget

    async def batch() -> None:
        for _ in range(APP_OPS):
            await aget(Service)

    run_async(benchmark, loop, batch, APP_OPS)


@pytest.mark.benchmark(group="app-get")
def test_app_get_dishka(benchmark: Any) -> None:
    container = make_container(dishka_provider())
    get = container.get
    service = get(Service)

    def batch() -> None:
        for _ in range(APP_OPS):
            get(Service)

    run(benchmark, batch, APP_OPS)
    assert get(Service) is service
    container.close()


@pytest.mark.benchmark(group="app-get")
def test_app_aget_dishka(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    container = make_async_container(dishka_provider())
    get = container.get
    loop.run_until_complete(get(Service))

    async def batch() -> None:
        for _ in range(APP_OPS):
            await get(Service)

    run_async(benchmark, loop, batch, APP_OPS)
    loop.run_until_complete(container.close())


# --------------------------------------------------------------------------- request scopes


@pytest.mark.benchmark(group="request-scope")
def test_request_scope_maaskit(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    registry = maaskit_registry()
    service = registry.get(Service)

    async def batch() -> None:
        for _ in range(REQUEST_OPS):
            async with registry.container() as c:
                await c.aget(Unit)

    run_async(benchmark, loop, batch, REQUEST_OPS)

    async def check() -> None:
        async with registry.container() as c:
            assert (await c.aget(Unit)).service is service

    loop.run_until_complete(check())


@pytest.mark.benchmark(group="request-scope")
def test_request_scope_maaskit_sync(benchmark: Any) -> None:
    registry = maaskit_registry()

    def batch() -> None:
        for _ in range(REQUEST_OPS):
            with registry.container() as c:
                c.get(Unit)

    run(benchmark, batch, REQUEST_OPS)


@pytest.mark.benchmark(group="request-scope")
def test_request_scope_svcs(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    registry = svcs_registry()

    async def batch() -> None:
        for _ in range(REQUEST_OPS):
            async with svcs.Container(registry) as c:
                await c.aget(Unit)

    run_async(benchmark, loop, batch, REQUEST_OPS)


@pytest.mark.benchmark(group="request-scope")
def test_request_scope_svcs_sync(benchmark: Any) -> None:
    registry = svcs_registry()

    def batch() -> None:
        for _ in range(REQUEST_OPS):
            with svcs.Container(registry) as c:
                c.get(Unit)

    run(benchmark, batch, REQUEST_OPS)


@pytest.mark.benchmark(group="request-scope")
def test_request_scope_dishka(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    container = make_async_container(dishka_provider())
    loop.run_until_complete(container.get(Service))

    async def batch() -> None:
        for _ in range(REQUEST_OPS):
            async with container() as request:
                await request.get(Unit)

    run_async(benchmark, loop, batch, REQUEST_OPS)
    loop.run_until_complete(container.close())


@pytest.mark.benchmark(group="request-scope")
def test_request_scope_dishka_sync(benchmark: Any) -> None:
    container = make_container(dishka_provider())
    container.get(Service)

    def batch() -> None:
        for _ in range(REQUEST_OPS):
            with container() as request:
                request.get(Unit)

    run(benchmark, batch, REQUEST_OPS)
    container.close()

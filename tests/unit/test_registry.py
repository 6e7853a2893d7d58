"""Unit tests of maaskit.registry: registration, validation, resolution, scopes, overrides,
health, shutdown and concurrency."""

import asyncio
import functools
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Protocol

import pytest
import structlog

from maaskit.errors import ConflictError, MaasError, NotFoundError, UnavailableError, ValidationError
from maaskit.i18n import default_localizer
from maaskit.registry import (
    Container,
    HealthCheck,
    HealthReport,
    Lifetime,
    ProblemKind,
    Registry,
    RegistryProblem,
)

# --------------------------------------------------------------------------- test services


class Settings:
    def __init__(self, dsn: str = "sqlite://") -> None:
        self.dsn = dsn


class Repo(Protocol):
    def find(self) -> str: ...


class SqlRepo:
    def __init__(self, settings: Settings, retries: int = 3) -> None:
        self.settings = settings
        self.retries = retries

    def find(self) -> str:
        return "sql"


class FakeRepo:
    def find(self) -> str:
        return "fake"


class UserService:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo


class UsageService:
    def __init__(self, keys: "ApiKeyService") -> None:
        self.keys = keys


class ApiKeyService:
    def __init__(self, usage: UsageService) -> None:
        self.usage = usage


class Selfish:
    def __init__(self, me: "Selfish") -> None:
        self.me = me


class Unit:
    """A request-lifetime unit of work."""

    def __init__(self, users: UserService) -> None:
        self.users = users


class Request:
    """Stands for a framework's request object (a per-container local value)."""


class CurrentUser:
    def __init__(self, request: Request) -> None:
        self.request = request


class Later:
    def __init__(self, nxt: "DefinedAfterwards") -> None:
        self.nxt = nxt


class DefinedAfterwards:
    pass


class Broken:
    def __init__(self, x: "NoSuchName") -> None:  # type: ignore[name-defined]  # noqa: F821
        self.x = x


class Engine:
    pass


class Unbuilt:
    pass


def make_registry() -> Registry:
    registry = Registry()
    registry.register_value(Settings, Settings("postgres://"))
    registry.register_class(Repo, SqlRepo)
    registry.register_class(UserService)
    return registry


# --------------------------------------------------------------------------- registration


def test_class_is_auto_wired_from_init_annotations() -> None:
    registry = make_registry()
    users = registry.get(UserService)
    assert isinstance(users.repo, SqlRepo)
    assert users.repo.settings.dsn == "postgres://"
    assert users.repo.retries == 3  # unregistered type with a default keeps it
    assert registry.get(UserService) is users
    assert registry.get(Repo) is users.repo


def test_registered_type_replaces_the_default() -> None:
    registry = make_registry()
    registry.register_value(int, 7)
    assert registry.get(Repo).retries == 7  # type: ignore[attr-defined]


def test_optional_without_default_gets_none_when_unregistered() -> None:
    class Cache:
        pass

    class WithOptional:
        def __init__(self, cache: Cache | None) -> None:
            self.cache = cache

    registry = Registry()
    registry.register_class(WithOptional)
    assert registry.problems() == []
    assert registry.get(WithOptional).cache is None
    other = Registry()
    other.register_class(WithOptional)
    other.register_class(Cache)
    assert isinstance(other.get(WithOptional).cache, Cache)


def test_positional_only_and_forward_references() -> None:
    class PosOnly:
        def __init__(self, settings: Settings, /) -> None:
            self.settings = settings

    registry = Registry()
    registry.register_value(Settings, Settings())
    registry.register_class(PosOnly)
    registry.register_class(Later)
    registry.register_class(DefinedAfterwards)
    assert registry.get(PosOnly).settings is registry.get(Settings)
    assert isinstance(registry.get(Later).nxt, DefinedAfterwards)


def test_class_without_init_and_attrs_class() -> None:
    import attrs

    @attrs.frozen
    class Frozen:
        settings: Settings
        n: int = 5

    registry = Registry()
    registry.register_value(Settings, Settings())
    registry.register_class(Frozen)
    registry.register_class(Engine)
    assert registry.get(Frozen).n == 5
    assert isinstance(registry.get(Engine), Engine)


def test_protocol_impl_subclassing_the_protocol_has_no_parameters() -> None:
    class Explicit(Repo):
        def find(self) -> str:
            return "x"

    registry = Registry()
    registry.register_class(Repo, Explicit)
    assert registry.get(Repo).find() == "x"


@pytest.mark.parametrize(
    ("service", "impl", "reason"),
    [
        ("not a type", None, "must be a class"),
        (42, None, "must be a class"),
        (Repo, None, "is a Protocol"),
        (Repo, FakeRepo(), "is not a class"),
        (Settings, Engine, "is not a subclass of Settings"),
    ],
)
def test_register_class_misuse(service: object, impl: object, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        Registry().register_class(service, impl)  # type: ignore[arg-type]
    assert info.value.code == "registry.bad_registration"
    assert reason in str(info.value)


def test_abstract_impl_and_unknown_lifetime_are_refused() -> None:
    import abc

    class Base(abc.ABC):
        @abc.abstractmethod
        def run(self) -> None: ...

    with pytest.raises(ValidationError, match="is abstract"):
        Registry().register_class(Base)
    with pytest.raises(ValidationError, match="unknown lifetime"):
        Registry().register_class(Engine, lifetime="forever")  # type: ignore[arg-type]
    Registry().register_class(Engine, lifetime="request")  # type: ignore[arg-type]


def test_register_factory_misuse() -> None:
    registry = Registry()
    with pytest.raises(ValidationError, match="must be a function"):
        registry.register_factory(Engine, 42)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="register_class"):
        registry.register_factory(Engine, Engine)

    def returns_nothing() -> None:
        return None

    with pytest.raises(ValidationError, match="annotated to return None") as info:
        registry.register_factory(Engine, returns_nothing)  # type: ignore[arg-type]
    assert info.value.code == "registry.bad_registration"


def test_factory_returning_none_at_resolve_time() -> None:
    registry = Registry()
    registry.register_factory(Engine, lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValidationError) as info:
        registry.get(Engine)
    assert info.value.code == "registry.factory_no_value"


def test_value_for_request_lifetime_is_refused() -> None:
    with pytest.raises(ValidationError, match="register_local") as info:
        Registry().register_value(Engine, Engine(), lifetime=Lifetime.REQUEST)
    assert info.value.code == "registry.bad_registration"


def test_factories_are_wired_by_annotation() -> None:
    def make_engine(settings: Settings) -> Engine:
        engine = Engine()
        engine.dsn = settings.dsn  # type: ignore[attr-defined]
        return engine

    class Factory:
        def __call__(self, settings: Settings) -> Engine:
            return make_engine(settings)

    def with_extra(settings: Settings, label: str) -> Engine:
        engine = make_engine(settings)
        engine.label = label  # type: ignore[attr-defined]
        return engine

    for factory in (make_engine, Factory(), functools.partial(with_extra, label="x")):
        registry = Registry()
        registry.register_value(Settings, Settings("dsn"))
        registry.register_factory(Engine, factory)
        assert registry.problems() == []
        assert registry.get(Engine).dsn == "dsn"  # type: ignore[attr-defined]


def test_is_registered() -> None:
    registry = make_registry()
    assert registry.is_registered(UserService)
    assert registry.is_registered(Repo)
    assert not registry.is_registered(Engine)
    assert not registry.is_registered([])  # type: ignore[arg-type]
    registry.apply_overrides({Engine: Engine()})
    assert registry.is_registered(Engine)


def test_re_registering_replaces_until_built() -> None:
    registry = make_registry()
    registry.register_class(Repo, FakeRepo)
    registry.register_value(Settings, Settings("other"))
    assert isinstance(registry.get(UserService).repo, FakeRepo)
    with pytest.raises(ConflictError) as info:
        registry.register_class(Repo, SqlRepo)
    assert info.value.code == "registry.register_too_late"
    assert info.value.params["built"] == "Repo, UserService"
    registry.register_class(Engine)  # unrelated: still fine


def test_replacing_a_value_whose_dependents_are_built_is_refused() -> None:
    registry = make_registry()
    registry.get(UserService)
    with pytest.raises(ConflictError, match="already built: Repo, UserService"):
        registry.register_value(Settings, Settings())


# --------------------------------------------------------------------------- problems / validate


def test_valid_registry_has_no_problems() -> None:
    registry = make_registry()
    assert registry.problems() == []
    registry.validate()


def test_missing_registration_names_the_chain() -> None:
    registry = Registry()
    registry.register_class(UserService)
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    [problem] = registry.problems()
    assert problem.kind is ProblemKind.MISSING
    assert problem.service is Repo
    assert problem.path == (Unit, UserService, Repo)
    assert problem.chain == "Unit -> UserService -> Repo"
    assert str(problem) == "No service is registered for Repo (Unit -> UserService -> Repo)."
    assert "Für Repo ist kein Dienst registriert" in problem.render("de")


def test_cycle_names_the_chain() -> None:
    registry = Registry()
    registry.register_class(ApiKeyService)
    registry.register_class(UsageService)
    [problem] = registry.problems()
    assert problem.kind is ProblemKind.CYCLE
    assert problem.chain == "ApiKeyService -> UsageService -> ApiKeyService"
    assert problem.path == (ApiKeyService, UsageService, ApiKeyService)
    with pytest.raises(ValidationError) as info:
        registry.validate()
    assert info.value.code == "registry.invalid"
    assert "Dependency cycle: ApiKeyService -> UsageService -> ApiKeyService" in str(info.value)


def test_self_cycle() -> None:
    registry = Registry()
    registry.register_class(Selfish)
    [problem] = registry.problems()
    assert problem.chain == "Selfish -> Selfish"
    with pytest.raises(ValidationError, match="Selfish -> Selfish"):
        registry.get(Selfish)


def test_validate_lists_every_problem() -> None:
    class NoAnnotation:
        def __init__(self, thing) -> None:  # type: ignore[no-untyped-def]
            self.thing = thing

    class NotAClass:
        def __init__(self, things: list[int]) -> None:
            self.things = things

    registry = Registry()
    registry.register_class(ApiKeyService)
    registry.register_class(UsageService)
    registry.register_class(UserService)  # Repo missing
    registry.register_class(NoAnnotation)
    registry.register_class(NotAClass)
    registry.register_class(Broken)
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    registry.register_class(Engine)

    class NeedsUnit:
        def __init__(self, unit: Unit) -> None:
            self.unit = unit

    registry.register_class(NeedsUnit)  # app depending on request
    problems = registry.problems()
    kinds = sorted(p.kind.value for p in problems)
    assert kinds == [
        "cycle",
        "missing",
        "scope_violation",
        "unresolvable_parameter",
        "unresolvable_parameter",
        "unresolvable_parameter",
    ]
    by_kind = {p.kind: p for p in problems}
    assert by_kind[ProblemKind.SCOPE_VIOLATION].chain == "NeedsUnit -> Unit"
    texts = [str(p) for p in problems]
    assert any("NoAnnotation" in t and "no type annotation" in t for t in texts)
    assert any("list[int]" in t and "is not a class" in t for t in texts)
    assert any("Broken" in t and "NameError" in t for t in texts)
    with pytest.raises(ValidationError) as info:
        registry.validate()
    assert info.value.params["count"] == 6
    message = str(info.value)
    assert message.startswith("The registry is not valid: (1) ")
    for text in texts:
        assert text.rstrip(".") in message
    assert info.value.render("de").startswith("Die Registry ist ungültig")


def test_overrides_and_locals_satisfy_validation() -> None:
    registry = Registry(overrides={Repo: FakeRepo()})
    registry.register_class(UserService)
    registry.register_local(Request)
    registry.register_class(CurrentUser, lifetime=Lifetime.REQUEST)
    assert registry.problems() == []
    # an overridden service's own dependencies no longer matter
    cyclic = Registry(overrides={UsageService: object()})
    cyclic.register_class(ApiKeyService)
    cyclic.register_class(UsageService)
    assert cyclic.problems() == []


def test_app_service_depending_on_a_local_is_a_scope_violation() -> None:
    registry = Registry()
    registry.register_local(Request)
    registry.register_class(CurrentUser)
    [problem] = registry.problems()
    assert problem.kind is ProblemKind.SCOPE_VIOLATION
    assert "Scope violation: CurrentUser has app lifetime" in str(problem)


def test_problem_is_an_attrs_value() -> None:
    registry = Registry()
    registry.register_class(UserService)
    [problem] = registry.problems()
    assert isinstance(problem, RegistryProblem)
    assert problem == registry.problems()[0]
    with pytest.raises(AttributeError):
        problem.chain = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- resolution errors


def test_resolving_unregistered_names_the_chain() -> None:
    registry = Registry()
    with pytest.raises(NotFoundError) as info:
        registry.get(Engine)
    assert info.value.code == "registry.not_registered"
    assert str(info.value) == "No service is registered for Engine."
    registry.register_class(Unit)
    registry.register_class(UserService)
    with pytest.raises(NotFoundError) as info:
        registry.get(Unit)
    assert str(info.value) == "No service is registered for Repo (Unit -> UserService -> Repo)."


async def test_resolve_time_cycle_names_the_chain() -> None:
    registry = Registry()
    registry.register_class(ApiKeyService)
    registry.register_class(UsageService)
    with pytest.raises(ValidationError) as info:
        registry.get(UsageService)
    assert info.value.code == "registry.cycle"
    assert info.value.params["chain"] == "UsageService -> ApiKeyService -> UsageService"
    with pytest.raises(ValidationError) as info:
        await registry.aget(UsageService)
    assert info.value.params["chain"] == "UsageService -> ApiKeyService -> UsageService"
    assert registry.built() == ()


def test_resolving_a_non_type() -> None:
    registry = Registry()
    with pytest.raises(ValidationError) as info:
        registry.get("Engine")
    assert info.value.code == "registry.not_a_type"
    with pytest.raises(ValidationError, match="is not a class"):
        registry.get([1])  # type: ignore[arg-type]


def test_request_service_from_the_registry_is_refused() -> None:
    registry = make_registry()
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    with pytest.raises(ValidationError) as info:
        registry.get(Unit)
    assert info.value.code == "registry.request_scope_required"
    assert "registry.container()" in str(info.value)


async def test_app_service_depending_on_request_service_fails_at_resolve() -> None:
    class NeedsUnit:
        def __init__(self, unit: Unit) -> None:
            self.unit = unit

    registry = make_registry()
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    registry.register_class(NeedsUnit)
    async with registry.container() as c:
        with pytest.raises(ValidationError) as info:
            await c.aget(NeedsUnit)
    assert info.value.code == "registry.scope_violation"
    assert info.value.params["chain"] == "NeedsUnit -> Unit"


def test_unwirable_parameter_fails_at_resolve() -> None:
    registry = Registry()
    registry.register_class(Broken)
    with pytest.raises(ValidationError) as info:
        registry.get(Broken)
    assert info.value.code == "registry.unresolvable_parameter"
    assert info.value.params["parameter"] == "x"


# --------------------------------------------------------------------------- sync and async


async def make_engine_async(settings: Settings) -> Engine:
    await asyncio.sleep(0)
    engine = Engine()
    engine.dsn = settings.dsn  # type: ignore[attr-defined]
    return engine


class UsesEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine


async def test_async_factory_needs_aget() -> None:
    registry = Registry()
    registry.register_value(Settings, Settings("a"))
    registry.register_factory(Engine, make_engine_async)
    registry.register_class(UsesEngine)
    with pytest.raises(ValidationError) as info:
        registry.get(UsesEngine)
    assert info.value.code == "registry.async_required"
    assert info.value.params["chain"] == "UsesEngine -> Engine"
    assert "await aget" in str(info.value)
    uses = await registry.aget(UsesEngine)
    assert uses.engine.dsn == "a"  # type: ignore[attr-defined]
    assert registry.get(UsesEngine) is uses  # built: the sync path works now
    assert registry.built() == (Engine, UsesEngine)


async def test_sync_factory_returning_a_coroutine() -> None:
    registry = Registry()
    registry.register_value(Settings, Settings())
    registry.register_factory(Engine, lambda settings: make_engine_async(settings))
    # a lambda has no annotations: its parameter cannot be wired
    assert [p.kind for p in registry.problems()] == [ProblemKind.UNRESOLVABLE_PARAMETER]

    def indirect() -> Engine:
        return make_engine_async(Settings("i"))  # type: ignore[return-value]

    registry.register_factory(Engine, indirect)
    with pytest.raises(ValidationError, match="aget"):
        registry.get(Engine)
    assert (await registry.aget(Engine)).dsn == "i"  # type: ignore[attr-defined]


async def test_generator_factories_clean_up_after_yield() -> None:
    events: list[str] = []

    def sync_gen(settings: Settings) -> Iterator[Engine]:
        events.append("open sync")
        yield Engine()
        events.append("close sync")

    async def async_gen() -> AsyncIterator[Unbuilt]:
        events.append("open async")
        yield Unbuilt()
        events.append("close async")

    registry = Registry()
    registry.register_value(Settings, Settings())
    registry.register_factory(Engine, sync_gen)
    registry.register_factory(Unbuilt, async_gen)
    assert isinstance(registry.get(Engine), Engine)
    assert isinstance(await registry.aget(Unbuilt), Unbuilt)
    await registry.aclose()
    assert events == ["open sync", "open async", "close async", "close sync"]


async def test_generator_that_does_not_yield() -> None:
    def empty() -> Iterator[Engine]:
        yield from ()

    async def aempty() -> AsyncIterator[Unbuilt]:
        if False:
            yield Unbuilt()

    registry = Registry()
    registry.register_factory(Engine, empty)
    registry.register_factory(Unbuilt, aempty)
    with pytest.raises(ValidationError, match="returned no value"):
        registry.get(Engine)
    with pytest.raises(ValidationError, match="returned no value"):
        await registry.aget(Unbuilt)


async def test_generator_yielding_twice_is_logged() -> None:
    def twice() -> Iterator[Engine]:
        yield Engine()
        yield Engine()

    registry = Registry()
    registry.register_factory(Engine, twice)
    registry.get(Engine)
    with structlog.testing.capture_logs() as logs:
        await registry.aclose()
    assert logs[0]["event"] == "registry.close_failed"
    assert logs[0]["error"] == "RuntimeError"


# --------------------------------------------------------------------------- containers


class Tracked:
    """Records its close in a shared list."""

    log: list[str]

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def close(self) -> None:
        self.log.append(self.name)


class RequestThing:
    def __init__(self, users: UserService) -> None:
        self.users = users
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_request_instances_are_per_container_and_closed_at_exit() -> None:
    registry = make_registry()
    registry.register_class(RequestThing, lifetime=Lifetime.REQUEST)
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    async with registry.container() as c1:
        first = await c1.aget(RequestThing)
        assert c1.get(RequestThing) is first
        assert await c1.aget(UserService) is registry.get(UserService)
        assert first.users is registry.get(UserService)
        assert c1.get(Unit).users is first.users
        assert c1.registry is registry
    assert first.closed
    assert c1.closed
    async with registry.container() as c2:
        second = await c2.aget(RequestThing)
    assert second is not first
    assert registry.built() == (Repo, UserService)  # request instances are not app-built


async def test_container_closes_in_reverse_creation_order() -> None:
    log: list[str] = []

    class A(Tracked):
        def __init__(self) -> None:
            super().__init__("a", log)

    class B(Tracked):
        def __init__(self, a: A) -> None:
            super().__init__("b", log)

    class C(Tracked):
        def __init__(self, b: B) -> None:
            super().__init__("c", log)

    registry = Registry()
    for cls in (A, B, C):
        registry.register_class(cls, lifetime=Lifetime.REQUEST)
    async with registry.container() as c:
        c.get(C)
    assert log == ["c", "b", "a"]


async def test_closed_container_resolves_nothing() -> None:
    registry = make_registry()
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    registry.get(UserService)
    c = registry.container()
    async with c:
        c.get(Unit)
    for service in (Unit, UserService, Engine):
        with pytest.raises(UnavailableError) as info:
            c.get(service)
        assert info.value.code == "registry.closed"
        with pytest.raises(UnavailableError):
            await c.aget(service)
    with pytest.raises(UnavailableError):
        c.register_local_value(Request, Request())
    await c.aclose()  # idempotent
    c.close()


async def test_local_values() -> None:
    registry = Registry()
    registry.register_local(Request)
    registry.register_class(CurrentUser, lifetime=Lifetime.REQUEST)
    registry.validate()
    request = Request()
    async with registry.container() as c:
        c.register_local_value(Request, request)
        user = await c.aget(CurrentUser)
        assert user.request is request
        assert c.get(Request) is request
        with pytest.raises(ConflictError) as info:
            c.register_local_value(Request, Request())
        assert info.value.code == "registry.override_too_late"
        with pytest.raises(ValidationError):
            c.register_local_value("Request", 1)
    async with registry.container() as c:
        with pytest.raises(ValidationError) as info2:
            await c.aget(CurrentUser)
        assert info2.value.code == "registry.local_missing"
    with pytest.raises(ValidationError) as info3:
        registry.get(Request)
    assert info3.value.code == "registry.request_scope_required"


async def test_local_value_shadows_within_its_container_only() -> None:
    registry = make_registry()
    fake = UserService(FakeRepo())
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    async with registry.container() as c:
        c.register_local_value(UserService, fake)
        assert c.get(Unit).users is fake
    assert registry.get(UserService) is not fake


def test_sync_container() -> None:
    log: list[str] = []

    class Conn(Tracked):
        def __init__(self) -> None:
            super().__init__("conn", log)

    registry = Registry()
    registry.register_class(Conn, lifetime=Lifetime.REQUEST)
    with registry.container() as c:
        assert isinstance(c, Container)
        c.get(Conn)
    assert log == ["conn"]


async def test_sync_close_refuses_async_closers() -> None:
    registry = Registry()
    registry.register_class(RequestThing, lifetime=Lifetime.REQUEST)
    registry.register_value(UserService, UserService(FakeRepo()))
    c = registry.container()
    thing = c.get(RequestThing)
    with pytest.raises(ValidationError) as info:
        c.close()
    assert info.value.code == "registry.async_close_required"
    assert info.value.params["services"] == "RequestThing"
    assert not c.closed
    await c.aclose()
    assert thing.closed


async def test_async_request_factory_in_a_container() -> None:
    calls = 0

    async def make_unit(users: UserService) -> Unit:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return Unit(users)

    registry = make_registry()
    registry.register_factory(Unit, make_unit, lifetime=Lifetime.REQUEST)
    async with registry.container() as c:
        with pytest.raises(ValidationError, match="aget"):
            c.get(Unit)
        units = await asyncio.gather(*(c.aget(Unit) for _ in range(50)))
    assert calls == 1
    assert all(u is units[0] for u in units)


async def test_request_service_depending_on_async_app_service() -> None:
    class UnitOnEngine:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine

    registry = Registry()
    registry.register_value(Settings, Settings())
    registry.register_factory(Engine, make_engine_async)
    registry.register_class(UnitOnEngine, lifetime=Lifetime.REQUEST)
    async with registry.container() as c:
        with pytest.raises(ValidationError) as info:
            c.get(UnitOnEngine)
        assert info.value.params["chain"] == "UnitOnEngine -> Engine"
        unit = await c.aget(UnitOnEngine)
        assert unit.engine is registry.get(Engine)


async def test_request_cycle_in_container() -> None:
    class P:
        def __init__(self, q: "Q") -> None: ...

    class Q:
        def __init__(self, p: P) -> None: ...

    P.__init__.__annotations__["q"] = Q
    registry = Registry()
    registry.register_class(P, lifetime=Lifetime.REQUEST)
    registry.register_class(Q, lifetime=Lifetime.REQUEST)
    async with registry.container() as c:
        with pytest.raises(ValidationError, match=re.escape("P -> Q -> P")):
            await c.aget(P)


# --------------------------------------------------------------------------- overrides


async def test_overrides_at_build_time() -> None:
    fake = FakeRepo()
    registry = Registry(overrides={Repo: fake})
    registry.register_value(Settings, Settings())
    registry.register_class(Repo, SqlRepo)
    registry.register_class(UserService)
    assert registry.get(UserService).repo is fake
    assert registry.get(Repo) is fake
    # Settings is only needed by the overridden Repo: overriding it still is fine
    registry.apply_overrides({Settings: Settings("late")})
    with pytest.raises(ConflictError) as info:
        registry.apply_overrides({Repo: FakeRepo()})
    assert info.value.code == "registry.override_too_late"
    assert info.value.params == {"service": "Repo", "built": "UserService"}


def test_override_context_manager_restores() -> None:
    registry = make_registry()
    fake = FakeRepo()
    with registry.override(Repo, fake):
        users = registry.get(UserService)
        assert users.repo is fake
        assert registry.built() == (UserService,)
    # dependents built with the fake are dropped, the real service comes back
    assert registry.built() == ()
    real = registry.get(UserService)
    assert real is not users
    assert isinstance(real.repo, SqlRepo)


def test_override_of_a_value_restores_the_value() -> None:
    registry = make_registry()
    original = registry.get(Settings)
    other = Settings("other")
    with registry.override(Settings, other):
        assert registry.get(Settings) is other
        with registry.override(Settings, Settings("inner")):
            assert registry.get(Settings).dsn == "inner"
        assert registry.get(Settings) is other
    assert registry.get(Settings) is original


def test_override_refused_when_the_service_or_a_dependent_was_built() -> None:
    registry = make_registry()
    registry.get(UserService)
    with pytest.raises(ConflictError) as info, registry.override(Repo, FakeRepo()):
        pass
    assert info.value.code == "registry.override_too_late"
    assert info.value.params == {"service": "Repo", "built": "Repo, UserService"}
    with pytest.raises(ConflictError) as info, registry.override(Settings, Settings()):
        pass
    assert info.value.params["built"] == "Repo, UserService"
    assert str(info.value) == "Cannot override Settings: already built: Repo, UserService."
    assert registry.get(Settings).dsn == "postgres://"


def test_override_context_manager_cannot_be_reentered() -> None:
    registry = make_registry()
    cm = registry.override(Engine, Engine())
    with cm, pytest.raises(ConflictError), cm:
        pass


async def test_override_of_request_service_applies_in_containers() -> None:
    registry = make_registry()
    registry.register_class(Unit, lifetime=Lifetime.REQUEST)
    fake = Unit(UserService(FakeRepo()))
    with registry.override(Unit, fake):
        async with registry.container() as c:
            assert await c.aget(Unit) is fake
    async with registry.container() as c:
        assert await c.aget(Unit) is not fake


async def test_instances_dropped_by_override_exit_close_at_shutdown() -> None:
    log: list[str] = []

    class Client(Tracked):
        def __init__(self, repo: Repo) -> None:
            super().__init__("client", log)

    registry = make_registry()
    registry.register_class(Client)
    with registry.override(Repo, FakeRepo()):
        registry.get(Client)
    assert log == []
    await registry.aclose()
    assert log == ["client"]


async def test_overrides_and_values_are_never_closed() -> None:
    log: list[str] = []
    registry = Registry(overrides={Engine: Tracked("override", log)})
    registry.register_value(Tracked, Tracked("value", log))
    with registry.override(Unbuilt, Tracked("ctx", log)):
        pass
    await registry.aclose()
    assert log == []


# --------------------------------------------------------------------------- shutdown


class Order:
    log: list[str] = []


class AsyncCloser:
    def __init__(self) -> None:
        Order.log.append("create AsyncCloser")

    async def aclose(self) -> None:
        Order.log.append("aclose AsyncCloser")


class SyncCloser:
    def __init__(self, first: AsyncCloser) -> None:
        Order.log.append("create SyncCloser")

    def close(self) -> None:
        Order.log.append("close SyncCloser")


class AsyncCloseMethod:
    def __init__(self, previous: SyncCloser) -> None:
        Order.log.append("create AsyncCloseMethod")

    async def close(self) -> None:
        Order.log.append("async close AsyncCloseMethod")


class AsyncCM:
    def __init__(self, previous: AsyncCloseMethod) -> None:
        Order.log.append("create AsyncCM")

    async def __aenter__(self) -> "AsyncCM":
        return self

    async def __aexit__(self, *exc: object) -> None:
        Order.log.append("aexit AsyncCM")


class SyncCM:
    def __init__(self, previous: AsyncCM) -> None:
        Order.log.append("create SyncCM")

    def __enter__(self) -> "SyncCM":
        return self

    def __exit__(self, *exc: object) -> None:
        Order.log.append("exit SyncCM")


class Failing:
    def __init__(self, previous: SyncCM) -> None:
        Order.log.append("create Failing")

    async def aclose(self) -> None:
        raise RuntimeError("password=hunter2")


class NoClose:
    def __init__(self, previous: Failing) -> None:
        Order.log.append("create NoClose")


async def test_aclose_closes_in_reverse_creation_order_and_survives_errors() -> None:
    Order.log = []
    registry = Registry()
    for cls in (AsyncCloser, SyncCloser, AsyncCloseMethod, AsyncCM, SyncCM, Failing, NoClose):
        registry.register_class(cls)
    registry.get(NoClose)
    creation = list(Order.log)
    assert creation[0] == "create AsyncCloser"
    Order.log = []
    with structlog.testing.capture_logs() as logs:
        await registry.aclose()
    assert Order.log == [
        "exit SyncCM",
        "aexit AsyncCM",
        "async close AsyncCloseMethod",
        "close SyncCloser",
        "aclose AsyncCloser",
    ]
    assert logs == [
        {
            "event": "registry.close_failed",
            "service": "Failing",
            "error": "RuntimeError",
            "log_level": "error",
        }
    ]
    assert "hunter2" not in repr(logs)
    Order.log = []
    await registry.aclose()  # idempotent
    assert Order.log == []


async def test_maas_error_in_close_is_logged_with_its_message() -> None:
    class Bad:
        def close(self) -> None:
            raise UnavailableError("registry.closed", service="x")

    registry = Registry()
    registry.register_class(Bad)
    registry.get(Bad)
    with structlog.testing.capture_logs() as logs:
        await registry.aclose()
    assert logs[0]["error"].startswith("UnavailableError: The registry or container is closed")


async def test_same_instance_under_two_services_is_closed_once() -> None:
    log: list[str] = []
    shared = Tracked("shared", log)
    registry = Registry()
    registry.register_factory(Tracked, lambda: shared)
    registry.register_factory(Engine, lambda: shared)  # type: ignore[arg-type,return-value]
    registry.get(Tracked)
    registry.get(Engine)
    await registry.aclose()
    assert log == ["shared"]


async def test_closed_registry_refuses_everything() -> None:
    registry = make_registry()
    registry.get(UserService)
    await registry.aclose()
    assert registry.closed
    assert registry.built() == ()
    for call in (
        lambda: registry.get(UserService),
        lambda: registry.get(Settings),
        registry.container,
        lambda: registry.register_class(Engine),
        lambda: registry.override(Engine, Engine()),
    ):
        with pytest.raises(UnavailableError) as info:
            call()
        assert info.value.code == "registry.closed"
    with pytest.raises(UnavailableError):
        await registry.aget(UserService)
    with pytest.raises(UnavailableError):
        await registry.health()


async def test_sync_close() -> None:
    log: list[str] = []

    class Conn(Tracked):
        def __init__(self) -> None:
            super().__init__("conn", log)

    registry = Registry()
    registry.register_class(Conn)
    registry.get(Conn)
    registry.close()
    registry.close()
    assert log == ["conn"]
    assert registry.closed

    other = Registry()
    other.register_class(AsyncCloser)
    other.get(AsyncCloser)
    with pytest.raises(ValidationError) as info:
        other.close()
    assert info.value.code == "registry.async_close_required"
    assert not other.closed
    await other.aclose()


async def test_registry_as_async_context_manager() -> None:
    log: list[str] = []
    async with Registry() as registry:
        registry.register_factory(Tracked, lambda: Tracked("t", log))
        registry.get(Tracked)
    assert log == ["t"]
    assert "closed" in repr(registry)


# --------------------------------------------------------------------------- health


class Healthy:
    async def ping(self) -> None:
        return None


class SyncHealthy:
    def ping(self) -> bool:
        return True


class Hanging:
    def __init__(self) -> None:
        self.never = asyncio.Event()

    async def ping(self) -> None:
        await self.never.wait()


class LeakyFailure:
    async def ping(self) -> None:
        raise ConnectionError("redis://:s3cret@host")


class MaasFailure:
    async def ping(self) -> None:
        raise UnavailableError("registry.closed", service="db")


class SaysNo:
    async def ping(self) -> bool:
        return False


class OwnTimeout:
    async def ping(self) -> None:
        raise TimeoutError


async def test_health_reports_every_built_pingable_instance() -> None:
    registry = Registry()
    registry.register_class(Healthy, name="database")
    registry.register_class(SyncHealthy)
    registry.register_class(Hanging)
    registry.register_class(LeakyFailure)
    registry.register_class(MaasFailure)
    registry.register_class(SaysNo)
    registry.register_class(OwnTimeout)
    registry.register_class(Unbuilt)
    registry.register_value(Settings, Settings())
    for cls in (Healthy, SyncHealthy, Hanging, LeakyFailure, MaasFailure, SaysNo, OwnTimeout, Unbuilt):
        registry.get(cls)
    report = await registry.health(timeout=0.05)
    assert isinstance(report, HealthReport)
    assert not report.ok
    checks = {c.name: c for c in report.checks}
    assert list(checks) == [
        "database",
        "SyncHealthy",
        "Hanging",
        "LeakyFailure",
        "MaasFailure",
        "SaysNo",
        "OwnTimeout",
    ]
    assert checks["database"].ok
    assert checks["database"].error is None
    assert checks["SyncHealthy"].ok
    assert checks["Hanging"] == HealthCheck(
        "Hanging", False, checks["Hanging"].latency_ms, "timeout after 0.05 s"
    )
    assert checks["LeakyFailure"].error == "ConnectionError"
    assert checks["MaasFailure"].error == (
        "UnavailableError: The registry or container is closed; db cannot be resolved."
    )
    assert checks["SaysNo"].error == "ping returned False"
    assert checks["OwnTimeout"].error == "TimeoutError"
    assert all(c.latency_ms >= 0 for c in report.checks)
    data = report.to_dict()
    assert data["ok"] is False
    assert data["checks"][0] == {"name": "database", "ok": True, "latency_ms": checks["database"].latency_ms,
                                 "error": None}  # fmt: skip
    assert "s3cret" not in json.dumps(data)


async def test_health_only_pings_what_exists() -> None:
    registry = Registry(overrides={Hanging: Healthy()})
    registry.register_class(Healthy)
    registry.register_value(SyncHealthy, SyncHealthy())
    report = await registry.health()
    assert [c.name for c in report.checks] == ["Hanging", "SyncHealthy"]
    assert report.ok
    assert (await registry.health(include_values=False)).checks == ()
    registry.get(Healthy)
    assert [c.name for c in (await registry.health(include_values=False)).checks] == ["Healthy"]


async def test_health_runs_pings_concurrently() -> None:
    # each ping needs the other one to have started: sequential pings would time out
    first_started, second_started = asyncio.Event(), asyncio.Event()

    class First:
        async def ping(self) -> None:
            first_started.set()
            await second_started.wait()

    class Second:
        async def ping(self) -> None:
            second_started.set()
            await first_started.wait()

    registry = Registry()
    registry.register_class(First)
    registry.register_class(Second)
    registry.get(First)
    registry.get(Second)
    report = await registry.health(timeout=5)
    assert report.ok, report


@pytest.mark.parametrize("timeout", [0, -1, "1", True, float("nan")])
async def test_health_rejects_bad_timeouts(timeout: object) -> None:
    with pytest.raises(ValidationError) as info:
        await Registry().health(timeout=timeout)  # type: ignore[arg-type]
    assert info.value.code == "health.invalid_timeout"


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_tasks_build_an_app_service_once() -> None:
    calls = 0

    async def slow_engine() -> Engine:
        nonlocal calls
        calls += 1
        for _ in range(5):
            await asyncio.sleep(0)
        return Engine()

    registry = Registry()
    registry.register_factory(Engine, slow_engine)
    registry.register_class(UsesEngine)
    engines = await asyncio.gather(
        *(registry.aget(Engine) for _ in range(25)), *(registry.aget(UsesEngine) for _ in range(25))
    )
    assert calls == 1
    assert len({id(e if isinstance(e, Engine) else e.engine) for e in engines}) == 1  # type: ignore[attr-defined]
    assert len({id(e) for e in engines if isinstance(e, UsesEngine)}) == 1


def test_concurrent_threads_build_an_app_service_once() -> None:
    calls = 0
    lock = threading.Lock()
    inside = threading.Event()

    def slow_engine() -> Engine:
        nonlocal calls
        with lock:
            calls += 1
        inside.set()
        threading.Event().wait(0.02)  # hold the build while the other threads pile up
        return Engine()

    registry = Registry()
    registry.register_factory(Engine, slow_engine)
    registry.register_class(UsesEngine)
    barrier = threading.Barrier(50)
    results: list[object] = []

    def worker(i: int) -> None:
        barrier.wait()
        results.append(registry.get(UsesEngine if i % 2 else Engine))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inside.is_set()
    assert calls == 1
    assert len(results) == 50
    assert len({id(r) for r in results if isinstance(r, UsesEngine)}) == 1


def test_concurrent_event_loops_in_threads_build_once() -> None:
    calls = 0
    lock = threading.Lock()

    async def slow_engine() -> Engine:
        nonlocal calls
        with lock:
            calls += 1
        await asyncio.sleep(0.02)
        return Engine()

    registry = Registry()
    registry.register_factory(Engine, slow_engine)
    barrier = threading.Barrier(20)
    results: list[Engine] = []

    def worker() -> None:
        barrier.wait()
        results.append(asyncio.run(registry.aget(Engine)))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1
    assert len(results) == 20
    assert len({id(r) for r in results}) == 1


async def test_failed_build_is_retried_by_the_next_caller() -> None:
    attempts = 0

    async def flaky() -> Engine:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0)
        if attempts == 1:
            raise ConnectionError("first try fails")
        return Engine()

    registry = Registry()
    registry.register_factory(Engine, flaky)
    with pytest.raises(ConnectionError):
        await registry.aget(Engine)
    assert registry.built() == ()
    assert isinstance(await registry.aget(Engine), Engine)


# --------------------------------------------------------------------------- catalogs


def test_every_registry_error_code_has_a_message_in_every_locale() -> None:
    source = Path(__file__).parents[2] / "src" / "maaskit" / "registry.py"
    codes = set(re.findall(r'"((?:registry|health)\.[a-z_]+)"', source.read_text(encoding="utf-8")))
    codes.discard("registry.close_failed")  # a log event, not an error code
    assert "registry.cycle" in codes
    localizer = default_localizer()
    for locale in localizer.locales:
        missing = codes - localizer.codes(locale)
        assert not missing, (locale, missing)
    root = resources.files("maaskit") / "locales"
    en = json.loads((root / "en" / "registry.json").read_text(encoding="utf-8"))
    de = json.loads((root / "de" / "registry.json").read_text(encoding="utf-8"))
    assert en.keys() == de.keys()
    for code in en:
        assert set(re.findall(r"{(\w+)}", en[code])) == set(re.findall(r"{(\w+)}", de[code])), code


def test_errors_are_maas_errors_with_stable_types() -> None:
    registry = Registry()
    with pytest.raises(MaasError) as info:
        registry.get(Engine)
    assert info.value.http_status == 404
    assert info.value.to_dict()["code"] == "registry.not_registered"

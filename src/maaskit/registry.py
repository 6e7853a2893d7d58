"""Dependency injection: the :class:`Registry` of services and per-request :class:`Container`.

The registry maps a service type (usually a :class:`typing.Protocol`) to one of

* a class, auto-wired from the type annotations of its ``__init__``
  (:meth:`Registry.register_class`);
* a factory function, sync or ``async``, plain or a generator that ``yield``\\ s the instance and
  cleans up after the ``yield`` (:meth:`Registry.register_factory`);
* a ready value (:meth:`Registry.register_value`), which the registry never closes;
* a per-request value that every container supplies itself (:meth:`Registry.register_local`).

Services have one of two :class:`Lifetime`\\ s: ``app`` instances are created lazily, once, and
closed by :meth:`Registry.aclose` in reverse creation order; ``request`` instances are created
once per :class:`Container` and closed when the container exits.

Example::

    from maaskit.registry import Lifetime, Registry

    registry = Registry()
    registry.register_value(Settings, settings)
    registry.register_factory(Engine, make_engine)  # async def make_engine(s: Settings) -> Engine
    registry.register_class(UserService, DefaultUserService)  # __init__(self, engine: Engine)
    registry.register_class(Unit, SqlUnit, lifetime=Lifetime.REQUEST)
    registry.validate()  # every missing registration and cycle, at once

    users = await registry.aget(UserService)
    async with registry.container() as c:
        unit = await c.aget(Unit)
    await registry.aclose()

Resolving an already-built app-scoped service is one dict lookup.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import time
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, suppress
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import structlog

from maaskit.errors import ConflictError, MaasError, NotFoundError, UnavailableError, ValidationError

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

    from typing_extensions import TypeForm

__all__ = [
    "Container",
    "HealthCheck",
    "HealthReport",
    "Lifetime",
    "ProblemKind",
    "Registry",
    "RegistryProblem",
]

T = TypeVar("T")

_log = structlog.get_logger(__name__)


class Lifetime(StrEnum):
    """How long an instance lives."""

    APP = "app"
    """One instance for the whole application, created on first use, closed by ``aclose()``."""
    REQUEST = "request"
    """One instance per :class:`Container`, closed when the container exits."""


class ProblemKind(StrEnum):
    """The kind of a :class:`RegistryProblem`."""

    MISSING = "missing"
    """A required dependency has no registration."""
    CYCLE = "cycle"
    """Services depend on each other in a circle."""
    SCOPE_VIOLATION = "scope_violation"
    """An app-lifetime service depends on a request-lifetime one."""
    UNRESOLVABLE_PARAMETER = "unresolvable_parameter"
    """A parameter without default has no usable type annotation."""


@attrs.frozen
class RegistryProblem:
    """One thing :meth:`Registry.validate` would refuse.

    Attributes:
        kind: what is wrong.
        service: the missing type (``missing``), the first service of the cycle (``cycle``),
            the app service (``scope_violation``) or the service owning the parameter.
        path: the services involved, in dependency order: for ``missing`` a path from a
            registered service to the missing type, for ``cycle`` the cycle with its first
            service repeated at the end, for ``scope_violation`` the app service and its
            request-lifetime dependency.
        code: the error code whose message describes the problem.
        params: the parameters of that message.
    """

    kind: ProblemKind
    service: type[Any]
    path: tuple[type[Any], ...]
    code: str
    params: Mapping[str, Any] = attrs.field(factory=dict, eq=False)
    chain: str = ""
    """The path as text, e.g. ``"ApiKeyService -> UsageService -> ApiKeyService"``."""

    def render(self, locale: str = "en") -> str:
        """The problem's message in *locale*."""
        from maaskit.i18n import default_localizer

        return default_localizer().render(self.code, self.params, locale=locale)

    def __str__(self) -> str:
        return self.render()


@attrs.frozen
class HealthCheck:
    """The outcome of one service's ``ping()``.

    Attributes:
        name: the service's name (its registration ``name`` or its type's name).
        ok: whether the ping answered in time without error (and did not return ``False``).
        latency_ms: how long the ping took, in milliseconds.
        error: ``None`` when ok; otherwise ``"timeout after X s"``, the exception's type name
            (plus the message of a :class:`~maaskit.errors.MaasError`) or
            ``"ping returned False"``. Never the text of an arbitrary exception, which may
            carry a secret.
    """

    name: str
    ok: bool
    latency_ms: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"name": self.name, "ok": self.ok, "latency_ms": self.latency_ms, "error": self.error}


@attrs.frozen
class HealthReport:
    """The result of :meth:`Registry.health`: ``ok`` when every check is ok."""

    ok: bool
    checks: tuple[HealthCheck, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"ok": bool, "checks": [{name, ok, latency_ms, error}, ...]}``."""
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


# --------------------------------------------------------------------------- internals

_MISSING: Final[Any] = object()
_SKIP: Final[Any] = object()

_CLASS: Final = 0
_FACTORY: Final = 1
_VALUE: Final = 2
_LOCAL: Final = 3

# how an instance is closed, cached per type
_C_NONE: Final = 0
_C_ACLOSE: Final = 1
_C_CLOSE: Final = 2
_C_ACLOSE_VIA_CLOSE: Final = 3  # ``async def close()``
_C_AEXIT: Final = 4
_C_EXIT: Final = 5
_CLOSERS: dict[type[Any], int] = {}
_NO_INSTANCES: Final[dict[Any, Any]] = {}  # what a closed container looks app instances up in

_Created = tuple[str, object, Any]  # (display name, instance, generator finaliser or None)


class _AsyncRequiredError(ValidationError):
    """``registry.async_required``: raised by the sync paths; the async paths catch it and retry."""


class _Param:
    __slots__ = ("dep", "has_default", "name", "optional", "positional", "reason")

    def __init__(
        self,
        name: str,
        positional: bool,
        dep: type[Any] | None,
        has_default: bool,
        optional: bool,
        reason: str | None,
    ) -> None:
        self.name = name
        self.positional = positional
        self.dep = dep
        self.has_default = has_default
        self.optional = optional
        self.reason = reason


class _Provider:
    __slots__ = (
        "_params",
        "is_agen",
        "is_async",
        "is_gen",
        "kind",
        "lifetime",
        "name",
        "request",
        "service",
        "target",
    )

    def __init__(self, service: type[Any], kind: int, target: Any, lifetime: Lifetime, name: str) -> None:
        self.service = service
        self.kind = kind
        self.target = target
        self.lifetime = lifetime
        self.request = lifetime is Lifetime.REQUEST
        self.name = name
        self.is_agen = kind == _FACTORY and inspect.isasyncgenfunction(target)
        self.is_gen = kind == _FACTORY and inspect.isgeneratorfunction(target)
        self.is_async = self.is_agen or (kind == _FACTORY and inspect.iscoroutinefunction(target))
        self._params: tuple[_Param, ...] | None = None

    def params(self) -> tuple[_Param, ...]:
        params = self._params
        if params is None:
            params = self._params = _analyse(self.target, self.kind == _CLASS)
        return params


def _type_name(obj: Any) -> str:
    name = getattr(obj, "__name__", None)
    return name if isinstance(name, str) else repr(obj)


def _hints(fn: Any, owner: Any) -> dict[str, Any]:
    """Evaluated annotations of *fn*; raises if they cannot be evaluated."""
    try:
        return typing.get_type_hints(fn)
    except Exception:
        module = sys.modules.get(getattr(owner, "__module__", "") or "")
        globalns = dict(vars(module)) if module is not None else {}
        localns = dict(vars(owner)) if isinstance(owner, type) else None
        target = getattr(fn, "func", fn)  # functools.partial
        return typing.get_type_hints(target, globalns=globalns, localns=localns)


def _analyse(target: Any, is_class: bool) -> tuple[_Param, ...]:
    """The injectable parameters of a class's ``__init__`` or of a factory."""
    if is_class:
        init = target.__init__
        hint_source: Any = init if init is not object.__init__ else None
        if hint_source is None and target.__new__ is not object.__new__:
            hint_source = target.__new__
    else:
        hint_source = (
            target if inspect.isroutine(target) or hasattr(target, "func") else type(target).__call__
        )
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return ()
    hint_error: str | None = None
    hints: dict[str, Any] = {}
    if hint_source is not None:
        try:
            hints = _hints(hint_source, target)
        except Exception as exc:
            hint_error = f"cannot evaluate its annotations ({type(exc).__name__}: {exc})"
    params: list[_Param] = []
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        has_default = p.default is not p.empty
        positional = p.kind is p.POSITIONAL_ONLY
        if hint_error is not None:
            params.append(_Param(p.name, positional, None, has_default, False, hint_error))
            continue
        if p.name not in hints:
            params.append(_Param(p.name, positional, None, has_default, False, "it has no type annotation"))
            continue
        dep, optional, reason = _dependency(hints[p.name])
        params.append(_Param(p.name, positional, dep, has_default, optional, reason))
    return tuple(params)


def _dependency(annotation: Any) -> tuple[type[Any] | None, bool, str | None]:
    """``(type to inject, is Optional, reason it cannot be injected)`` of one annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            annotation = args[0]
    if isinstance(annotation, type) and annotation is not type(None):
        return annotation, optional, None
    return None, optional, f"its annotation {annotation!r} is not a class"


def _closer(tp: type[Any]) -> int:
    kind = _CLOSERS.get(tp)
    if kind is None:
        if callable(getattr(tp, "aclose", None)):
            kind = _C_ACLOSE
        elif callable(close := getattr(tp, "close", None)):
            kind = _C_ACLOSE_VIA_CLOSE if inspect.iscoroutinefunction(close) else _C_CLOSE
        elif callable(getattr(tp, "__aexit__", None)):
            kind = _C_AEXIT
        elif callable(getattr(tp, "__exit__", None)):
            kind = _C_EXIT
        else:
            kind = _C_NONE
        if len(_CLOSERS) > 4096:
            _CLOSERS.clear()
        _CLOSERS[tp] = kind
    return kind


def _needs_async_close(instance: object, finaliser: Any) -> bool:
    if finaliser is not None:
        return inspect.isasyncgen(finaliser)
    return _closer(type(instance)) in (_C_ACLOSE, _C_ACLOSE_VIA_CLOSE, _C_AEXIT)


def _describe(exc: BaseException) -> str:
    """An exception as text that cannot leak a secret: its type, plus a MaasError's message."""
    if isinstance(exc, MaasError):
        return f"{type(exc).__name__}: {exc.message}"
    return type(exc).__name__


async def _aclose_item(name: str, instance: object, finaliser: Any) -> None:
    try:
        if finaliser is not None:
            if inspect.isasyncgen(finaliser):
                try:
                    await finaliser.__anext__()
                except StopAsyncIteration:
                    return
                await finaliser.aclose()
                raise RuntimeError("generator factory yielded more than once")
            _finish_generator(finaliser)
            return
        kind = _closer(type(instance))
        if kind == _C_NONE:
            return
        if kind == _C_ACLOSE:
            await instance.aclose()  # type: ignore[attr-defined]
        elif kind in (_C_CLOSE, _C_ACLOSE_VIA_CLOSE):
            result = instance.close()  # type: ignore[attr-defined]
            if inspect.isawaitable(result):
                await result
        elif kind == _C_AEXIT:
            await instance.__aexit__(None, None, None)  # type: ignore[attr-defined]
        else:
            instance.__exit__(None, None, None)  # type: ignore[attr-defined]
    except Exception as exc:
        _log.error("registry.close_failed", service=name, error=_describe(exc))


def _close_item(name: str, instance: object, finaliser: Any) -> None:
    try:
        if finaliser is not None:
            _finish_generator(finaliser)
            return
        kind = _closer(type(instance))
        if kind == _C_CLOSE:
            result = instance.close()  # type: ignore[attr-defined]
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("close() returned an awaitable: close it with 'await aclose()'")
        elif kind == _C_EXIT:
            instance.__exit__(None, None, None)  # type: ignore[attr-defined]
    except Exception as exc:
        _log.error("registry.close_failed", service=name, error=_describe(exc))


def _finish_generator(gen: Any) -> None:
    try:
        next(gen)
    except StopIteration:
        return
    gen.close()
    raise RuntimeError("generator factory yielded more than once")


async def _aclose_all(created: list[_Created]) -> None:
    seen: set[int] = set()
    for name, instance, finaliser in reversed(created):
        if finaliser is None:
            if id(instance) in seen:
                continue
            seen.add(id(instance))
        await _aclose_item(name, instance, finaliser)


def _close_all(created: list[_Created]) -> None:
    seen: set[int] = set()
    for name, instance, finaliser in reversed(created):
        if finaliser is None:
            if id(instance) in seen:
                continue
            seen.add(id(instance))
        _close_item(name, instance, finaliser)


def _chain_text(names: Iterable[str]) -> str:
    return " -> ".join(names)


async def _spin_acquire(lock: threading.RLock) -> None:
    """Acquire a thread lock from async code without blocking the event loop."""
    # only contended across threads or event loops, where no asyncio primitive can wake us
    while not lock.acquire(blocking=False):  # noqa: ASYNC110
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------- Registry


class Registry:
    """Service definitions plus the app-lifetime instances built from them.

    Args:
        overrides: ``{service: value}`` used instead of the registered definitions, fixed for
            the registry's life (the way ``build_test_app(overrides=...)`` swaps services for
            fakes). Same as calling :meth:`apply_overrides` before anything is built.
            Overrides are never closed by the registry.

    Thread- and task-safe: concurrent first resolutions of an app-lifetime service build it
    exactly once, whether they come from asyncio tasks or from OS threads.
    """

    __slots__ = (
        "__weakref__",
        "_alocks",
        "_built",
        "_closed",
        "_created",
        "_instances",
        "_overrides",
        "_providers",
        "_tlocks",
    )

    def __init__(self, overrides: Mapping[type[Any], object] | None = None) -> None:
        self._providers: dict[type[Any], _Provider] = {}
        # the fast path: overrides, values and built app instances; mutated in place only,
        # containers keep a reference to it
        self._instances: dict[Any, Any] = {}
        self._overrides: dict[type[Any], Any] = {}
        self._built: dict[type[Any], Any] = {}
        self._created: list[_Created] = []
        self._tlocks: dict[type[Any], threading.RLock] = {}
        self._alocks: dict[tuple[type[Any], asyncio.AbstractEventLoop], asyncio.Lock] = {}
        self._closed = False
        if overrides:
            self.apply_overrides(overrides)

    # ------------------------------------------------------------------ registration

    def register_class(
        self,
        service: TypeForm[T],
        impl: type[T] | None = None,
        *,
        lifetime: Lifetime = Lifetime.APP,
        name: str | None = None,
    ) -> None:
        """Register *impl* (default: *service* itself) as the implementation of *service*.

        Its ``__init__`` parameters are injected by their type annotations: a parameter whose
        type is registered gets that service; one that is not registered keeps its default
        (or gets ``None`` when annotated ``X | None`` without default); any other is a
        problem :meth:`validate` reports and resolution raises.

        Args:
            service: the type callers ask for, usually a Protocol.
            impl: the concrete class; required when *service* is a Protocol or abstract.
            lifetime: :attr:`Lifetime.APP` (default) or :attr:`Lifetime.REQUEST`.
            name: display name in errors and health reports (default: the type's name).

        Raises:
            ValidationError: ``registry.bad_registration`` for a non-class, a Protocol or
                abstract implementation, or an *impl* that is not a subclass of *service*.
            ConflictError: ``registry.register_too_late`` when *service* or a service
                depending on it was already built.
            UnavailableError: ``registry.closed`` after :meth:`aclose`.
        """
        svc = self._check_service(service)
        target: Any = svc if impl is None else impl
        if not isinstance(target, type):
            self._bad(svc, f"the implementation {target!r} is not a class")
        if getattr(target, "_is_protocol", False):
            self._bad(svc, f"{_type_name(target)} is a Protocol; pass a concrete class as impl")
        if inspect.isabstract(target):
            self._bad(svc, f"{_type_name(target)} is abstract; pass a concrete class as impl")
        if target is not svc and not getattr(svc, "_is_protocol", False):
            try:
                is_subclass = issubclass(target, svc)
            except TypeError:
                is_subclass = True
            if not is_subclass:
                self._bad(svc, f"{_type_name(target)} is not a subclass of {_type_name(svc)}")
        self._add(
            _Provider(svc, _CLASS, target, self._check_lifetime(svc, lifetime), name or _type_name(svc))
        )

    def register_factory(
        self,
        service: TypeForm[T],
        factory: Callable[..., T | Awaitable[T] | Iterator[T] | AsyncIterator[T]],
        *,
        lifetime: Lifetime = Lifetime.APP,
        name: str | None = None,
    ) -> None:
        """Register *factory* to build *service*.

        The factory may be a plain function, an ``async def`` (resolve with ``aget``), or a
        generator / async generator that yields the instance once and cleans up after the
        ``yield`` when the instance is closed (then the instance's own ``close`` is not called).
        Its parameters are injected by annotation, like :meth:`register_class`.

        Raises:
            ValidationError: ``registry.bad_registration`` when *factory* is not callable or is
                annotated to return ``None``.
            ConflictError: ``registry.register_too_late`` (see :meth:`register_class`).
        """
        svc = self._check_service(service)
        if not callable(factory) or isinstance(factory, type):
            self._bad(svc, "the factory must be a function (register a class with register_class)")
        returns = _MISSING
        with suppress(TypeError, ValueError):
            returns = inspect.signature(factory).return_annotation
        if returns is None or returns is type(None) or returns == "None":
            self._bad(svc, "the factory is annotated to return None")
        self._add(
            _Provider(svc, _FACTORY, factory, self._check_lifetime(svc, lifetime), name or _type_name(svc))
        )

    def register_value(
        self,
        service: TypeForm[T],
        value: T,
        *,
        lifetime: Lifetime = Lifetime.APP,
        name: str | None = None,
    ) -> None:
        """Register a ready *value* for *service* (app lifetime).

        The registry did not create the value, so it never closes it: whoever made it closes it.
        Values count as dependencies of others but are not "built" (see :meth:`built`).

        Raises:
            ValidationError: ``registry.bad_registration`` for ``lifetime=REQUEST``: a value is
                shared by the whole app; per-request values use :meth:`register_local` and
                :meth:`Container.register_local_value`.
        """
        svc = self._check_service(service)
        if lifetime != Lifetime.APP:
            self._bad(
                svc,
                "a value has app lifetime; for a per-request value use register_local() "
                "and Container.register_local_value()",
            )
        self._add(_Provider(svc, _VALUE, value, Lifetime.APP, name or _type_name(svc)))

    def register_local(self, service: TypeForm[Any], *, name: str | None = None) -> None:
        """Declare *service* as a per-request value each container supplies itself.

        Adapters use it for the current request object: declare it once here, so
        :meth:`validate` knows it, then ``container.register_local_value(Request, request)`` per
        request. Request-lifetime services may depend on it; app-lifetime ones may not.
        """
        svc = self._check_service(service)
        self._add(_Provider(svc, _LOCAL, None, Lifetime.REQUEST, name or _type_name(svc)))

    def is_registered(self, service: TypeForm[Any]) -> bool:
        """Whether *service* has a registration or an override."""
        try:
            return service in self._providers or service in self._overrides
        except TypeError:
            return False

    def _check_service(self, service: Any) -> type[Any]:
        if self._closed:
            raise UnavailableError("registry.closed", service=_type_name(service))
        if not isinstance(service, type):
            raise ValidationError(
                "registry.bad_registration",
                service=repr(service)[:80],
                reason="a service must be a class (a type or a Protocol)",
            )
        return service

    def _check_lifetime(self, service: type[Any], lifetime: Any) -> Lifetime:
        try:
            return Lifetime(lifetime)
        except ValueError:
            self._bad(service, f"unknown lifetime {lifetime!r}: use Lifetime.APP or Lifetime.REQUEST")

    @staticmethod
    def _bad(service: Any, reason: str) -> typing.NoReturn:
        raise ValidationError("registry.bad_registration", service=_type_name(service), reason=reason)

    def _add(self, provider: _Provider) -> None:
        service = provider.service
        built = self._built_dependents(service)
        if built:
            raise ConflictError(
                "registry.register_too_late",
                service=provider.name,
                built=", ".join(self._display(s) for s in built),
            )
        self._providers[service] = provider
        if service not in self._overrides:
            if provider.kind == _VALUE:
                self._instances[service] = provider.target
            else:
                self._instances.pop(service, None)

    def _display(self, service: Any) -> str:
        try:
            provider = self._providers.get(service)
        except TypeError:
            provider = None
        return provider.name if provider is not None else _type_name(service)

    def _names(self, path: Iterable[Any]) -> str:
        return _chain_text(self._display(s) for s in path)

    # ------------------------------------------------------------------ validation

    def _edges(self) -> dict[type[Any], list[type[Any]]]:
        """Dependency edges of every wired service, to every annotated dependency type."""
        edges: dict[type[Any], list[type[Any]]] = {}
        for service, provider in self._providers.items():
            if provider.kind > _FACTORY or service in self._overrides:
                continue
            edges[service] = [p.dep for p in provider.params() if p.dep is not None]
        return edges

    def _built_dependents(self, service: type[Any]) -> list[type[Any]]:
        """*service* and every service depending on it (transitively) that is built, in build order."""
        if not self._built:
            return []
        reverse: dict[type[Any], list[type[Any]]] = {}
        for node, deps in self._edges().items():
            for dep in deps:
                reverse.setdefault(dep, []).append(node)
        seen = {service}
        stack = [service]
        while stack:
            for dependent in reverse.get(stack.pop(), ()):
                if dependent not in seen:
                    seen.add(dependent)
                    stack.append(dependent)
        return [s for s in self._built if s in seen]

    def problems(self) -> list[RegistryProblem]:
        """Every problem :meth:`validate` refuses, each naming its chain.

        Reports each parameter that cannot be wired, each missing registration (once per
        missing type, with a path from a registered service to it), each app-lifetime service
        depending on a request-lifetime one, and each dependency cycle (one per strongly
        connected group of services, as one concrete cycle through it).
        """
        available = self._providers.keys() | self._overrides.keys()
        edges: dict[type[Any], list[type[Any]]] = {}
        reverse: dict[type[Any], list[type[Any]]] = {}
        unresolvable: list[RegistryProblem] = []
        scope: list[RegistryProblem] = []
        missing: dict[type[Any], type[Any]] = {}  # missing type -> first dependent
        for service, provider in self._providers.items():
            if provider.kind > _FACTORY or service in self._overrides:
                continue
            out = edges[service] = []
            for p in provider.params():
                dep = p.dep
                if dep is None:
                    if not p.has_default:
                        unresolvable.append(
                            RegistryProblem(
                                ProblemKind.UNRESOLVABLE_PARAMETER,
                                service,
                                (service,),
                                "registry.unresolvable_parameter",
                                {"parameter": p.name, "service": provider.name, "reason": p.reason},
                                chain=provider.name,
                            )
                        )
                    continue
                if dep in available:
                    if dep in out:
                        continue
                    out.append(dep)
                    reverse.setdefault(dep, []).append(service)
                    dep_provider = self._providers.get(dep)
                    if (
                        provider.lifetime == Lifetime.APP
                        and dep_provider is not None
                        and dep_provider.lifetime == Lifetime.REQUEST
                        and dep not in self._overrides
                    ):
                        chain = self._names((service, dep))
                        scope.append(
                            RegistryProblem(
                                ProblemKind.SCOPE_VIOLATION,
                                service,
                                (service, dep),
                                "registry.scope_violation",
                                {"service": provider.name, "dependency": dep_provider.name, "chain": chain},
                                chain=chain,
                            )
                        )
                elif not (p.has_default or p.optional):
                    missing.setdefault(dep, service)
        problems = unresolvable
        for dep, dependent in missing.items():
            path = [dependent]
            on_path = {dependent}
            while True:
                parent = next((s for s in reverse.get(path[0], ()) if s not in on_path), None)
                if parent is None:
                    break
                path.insert(0, parent)
                on_path.add(parent)
            path.append(dep)
            chain = self._names(path)
            problems.append(
                RegistryProblem(
                    ProblemKind.MISSING,
                    dep,
                    tuple(path),
                    "registry.not_registered",
                    {"service": _type_name(dep), "chain": f" ({chain})"},
                    chain=chain,
                )
            )
        problems.extend(scope)
        for cycle in _cycles(edges):
            chain = self._names(cycle)
            problems.append(
                RegistryProblem(
                    ProblemKind.CYCLE, cycle[0], cycle, "registry.cycle", {"chain": chain}, chain=chain
                )
            )
        return problems

    def validate(self) -> None:
        """Check the whole graph; raise one error listing every problem.

        Raises:
            ValidationError: ``registry.invalid``, its ``problems`` parameter listing every
                missing registration, cycle, scope violation and unwirable parameter.
        """
        problems = self.problems()
        if problems:
            raise ValidationError(
                "registry.invalid",
                problems="; ".join(f"({i}) {str(p).rstrip('.')}" for i, p in enumerate(problems, 1)),
                count=len(problems),
            )

    # ------------------------------------------------------------------ overrides

    def apply_overrides(self, overrides: Mapping[type[Any], object]) -> None:
        """Use *overrides* (``{service: value}``) instead of the registered definitions, for good.

        Meant for building an app for tests (``build_test_app(overrides=...)``); an overridden
        service need not be registered at all. Overrides are never closed by the registry.

        Raises:
            ConflictError: ``registry.override_too_late`` when a service, or anything depending
                on it, was already built.
        """
        for service in overrides:
            self._check_override(service)
        for service, value in overrides.items():
            self._overrides[service] = value
            self._instances[service] = value

    def override(self, service: TypeForm[T], value: T) -> AbstractContextManager[None]:
        """Use *value* for *service* inside a ``with`` block, then restore the previous state.

        Services built inside the block that depend on *service* are dropped from the registry
        at exit, so the next resolution rebuilds them with the real dependency; the dropped
        instances are closed with the registry (:meth:`aclose`). Open containers keep the
        request-lifetime instances they already built.

        Raises:
            ConflictError: ``registry.override_too_late`` (on entering) when *service*, or
                anything depending on it (transitively), was already built, naming them.
        """
        return _Override(self, self._check_service(service), value)

    def _check_override(self, service: Any) -> None:
        svc = self._check_service(service)
        built = self._built_dependents(svc)
        if built:
            raise ConflictError(
                "registry.override_too_late",
                service=self._display(svc),
                built=", ".join(self._display(s) for s in built),
            )

    # ------------------------------------------------------------------ resolution

    def built(self) -> tuple[type[Any], ...]:
        """The app-lifetime services built so far, in creation order (values and overrides excluded)."""
        return tuple(self._built)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` (or :meth:`close`) ran."""
        return self._closed

    def get(self, service: TypeForm[T]) -> T:
        """Resolve an app-lifetime *service* synchronously, building it (and its chain) if needed.

        Raises:
            NotFoundError: ``registry.not_registered``, naming the chain that needed it.
            ValidationError: ``registry.cycle``, ``registry.async_required`` (a factory in the
                chain is async: use :meth:`aget`), ``registry.request_scope_required``,
                ``registry.scope_violation``, ``registry.unresolvable_parameter``.
            UnavailableError: ``registry.closed``.
        """
        try:
            return self._instances[service]  # type: ignore[no-any-return]
        except (KeyError, TypeError):
            return self._get_slow(service, ())  # type: ignore[no-any-return]

    async def aget(self, service: TypeForm[T]) -> T:
        """Resolve an app-lifetime *service*, awaiting async factories in its chain.

        Raises the same errors as :meth:`get`, except ``registry.async_required``.
        """
        try:
            return self._instances[service]  # type: ignore[no-any-return]
        except (KeyError, TypeError):
            return await self._aget_slow(service, ())  # type: ignore[no-any-return]

    def container(self) -> Container:
        """A new request scope: ``async with registry.container() as c: await c.aget(T)``."""
        if self._closed:
            raise UnavailableError("registry.closed", service="container")
        return Container(self)

    def _lookup(self, service: Any, chain: tuple[type[Any], ...]) -> _Provider:
        """Checks shared by every slow path; returns the provider."""
        if self._closed:
            raise UnavailableError("registry.closed", service=_type_name(service))
        if not isinstance(service, type):
            raise ValidationError("registry.not_a_type", service=repr(service)[:80])
        if service in chain:
            cycle = (*chain[chain.index(service) :], service)
            raise ValidationError("registry.cycle", chain=self._names(cycle))
        provider = self._providers.get(service)
        if provider is None:
            chain_text = f" ({self._names((*chain, service))})" if chain else ""
            raise NotFoundError("registry.not_registered", service=_type_name(service), chain=chain_text)
        return provider

    def _app_provider(self, service: type[Any], chain: tuple[type[Any], ...]) -> _Provider:
        provider = self._lookup(service, chain)
        if provider.request:
            if chain:
                dependent = chain[-1]
                raise ValidationError(
                    "registry.scope_violation",
                    service=self._display(dependent),
                    dependency=provider.name,
                    chain=self._names((*chain, service)),
                )
            raise ValidationError("registry.request_scope_required", service=provider.name)
        return provider

    def _tlock(self, service: type[Any]) -> threading.RLock:
        lock = self._tlocks.get(service)
        if lock is None:
            lock = self._tlocks.setdefault(service, threading.RLock())
        return lock

    def _get_slow(self, service: Any, chain: tuple[type[Any], ...]) -> Any:
        provider = self._app_provider(service, chain)
        if provider.is_async:
            raise _AsyncRequiredError(
                "registry.async_required", service=provider.name, chain=self._names((*chain, service))
            )
        with self._tlock(service):
            if service in self._instances:
                return self._instances[service]
            if self._closed:
                raise UnavailableError("registry.closed", service=provider.name)
            value, finaliser = self._build_sync(provider, (*chain, service), None)
            self._store(provider, value, finaliser)
        self._tlocks.pop(service, None)
        return value

    async def _aget_slow(self, service: Any, chain: tuple[type[Any], ...]) -> Any:
        try:
            return self._get_slow(service, chain)
        except _AsyncRequiredError:
            pass
        provider = self._app_provider(service, chain)
        key = (service, asyncio.get_running_loop())
        alock = self._alocks.get(key)
        if alock is None:
            alock = self._alocks.setdefault(key, asyncio.Lock())
        async with alock:
            if service in self._instances:
                return self._instances[service]
            tlock = self._tlock(service)
            await _spin_acquire(tlock)
            try:
                if service in self._instances:
                    return self._instances[service]
                if self._closed:
                    raise UnavailableError("registry.closed", service=provider.name)
                value, finaliser = await self._build_async(provider, (*chain, service), None)
                self._store(provider, value, finaliser)
            finally:
                tlock.release()
        self._alocks.pop(key, None)
        self._tlocks.pop(service, None)
        return value

    def _store(self, provider: _Provider, value: Any, finaliser: Any) -> None:
        if finaliser is not None or _closer(type(value)):
            self._created.append((provider.name, value, finaliser))
        self._built[provider.service] = value
        self._instances[provider.service] = value  # publish last: the fast path reads this

    def _dep_sync(self, p: _Param, chain: tuple[type[Any], ...], container: Container | None) -> Any:
        dep = p.dep
        if dep is None:
            if p.has_default:
                return _SKIP
            raise self._unresolvable(p, chain)
        if container is not None:
            cache = container._cache
            if dep in cache:
                return cache[dep]
        if dep in self._instances:
            return self._instances[dep]
        provider = self._providers.get(dep)
        if provider is None:
            return self._absent(p, chain)
        if container is not None and provider.request:
            return container._get_slow(dep, chain)
        return self._get_slow(dep, chain)

    async def _dep_async(self, p: _Param, chain: tuple[type[Any], ...], container: Container | None) -> Any:
        dep = p.dep
        if dep is None:
            if p.has_default:
                return _SKIP
            raise self._unresolvable(p, chain)
        if container is not None:
            cache = container._cache
            if dep in cache:
                return cache[dep]
        if dep in self._instances:
            return self._instances[dep]
        provider = self._providers.get(dep)
        if provider is None:
            return self._absent(p, chain)
        if container is not None and provider.request:
            return await container._aget_slow(dep, chain)
        return await self._aget_slow(dep, chain)

    def _absent(self, p: _Param, chain: tuple[type[Any], ...]) -> Any:
        if p.has_default:
            return _SKIP
        if p.optional:
            return None
        assert p.dep is not None
        raise NotFoundError(
            "registry.not_registered",
            service=_type_name(p.dep),
            chain=f" ({self._names((*chain, p.dep))})",
        )

    def _unresolvable(self, p: _Param, chain: tuple[type[Any], ...]) -> MaasError:
        return ValidationError(
            "registry.unresolvable_parameter",
            parameter=p.name,
            service=self._display(chain[-1]),
            reason=p.reason,
        )

    def _build_sync(
        self, provider: _Provider, chain: tuple[type[Any], ...], container: Container | None
    ) -> tuple[Any, Any]:
        if provider.kind == _LOCAL:
            raise ValidationError("registry.local_missing", service=provider.name)
        if provider.is_async:
            raise _AsyncRequiredError(
                "registry.async_required", service=provider.name, chain=self._names(chain)
            )
        params = provider._params
        if params is None:
            params = provider.params()
        if params:
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            instances = self._instances
            cache = container._cache if container is not None else instances
            for p in params:
                dep = p.dep
                if dep in cache:
                    value = cache[dep]
                elif dep in instances:
                    value = instances[dep]
                else:
                    value = self._dep_sync(p, chain, container)
                    if value is _SKIP:
                        continue
                if p.positional:
                    args.append(value)
                else:
                    kwargs[p.name] = value
            result = provider.target(*args, **kwargs)
        else:
            result = provider.target()
        if provider.kind == _CLASS:
            return result, None
        if provider.is_gen:
            return self._first(provider, result), result
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise _AsyncRequiredError(
                "registry.async_required", service=provider.name, chain=self._names(chain)
            )
        if result is None:
            raise ValidationError("registry.factory_no_value", service=provider.name)
        return result, None

    async def _build_async(
        self, provider: _Provider, chain: tuple[type[Any], ...], container: Container | None
    ) -> tuple[Any, Any]:
        if provider.kind == _LOCAL:
            raise ValidationError("registry.local_missing", service=provider.name)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in provider.params():
            value = await self._dep_async(p, chain, container)
            if value is _SKIP:
                continue
            if p.positional:
                args.append(value)
            else:
                kwargs[p.name] = value
        result = provider.target(*args, **kwargs)
        if provider.kind == _CLASS:
            return result, None
        if provider.is_agen:
            try:
                value = await result.__anext__()
            except StopAsyncIteration:
                raise ValidationError("registry.factory_no_value", service=provider.name) from None
            return value, result
        if provider.is_gen:
            return self._first(provider, result), result
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            raise ValidationError("registry.factory_no_value", service=provider.name)
        return result, None

    @staticmethod
    def _first(provider: _Provider, gen: Any) -> Any:
        try:
            return next(gen)
        except StopIteration:
            raise ValidationError("registry.factory_no_value", service=provider.name) from None

    # ------------------------------------------------------------------ health and shutdown

    async def health(self, *, timeout: float = 2.0, include_values: bool = True) -> HealthReport:  # noqa: ASYNC109
        """Ping every live app-lifetime instance that has a ``ping()`` method, concurrently.

        Only instances that exist are pinged: built ones, and (with *include_values*) registered
        values and overrides; nothing is built for the check. Each ping gets its own *timeout*.
        A ping that raises, times out or returns ``False`` is not ok.

        Raises:
            ValidationError: ``health.invalid_timeout`` when *timeout* is not positive.
            UnavailableError: ``registry.closed``.
        """
        if self._closed:
            raise UnavailableError("registry.closed", service="health")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValidationError("health.invalid_timeout", timeout=repr(timeout))
        targets: list[tuple[str, Callable[[], Any]]] = []
        seen: set[int] = set()
        for service, instance in list(self._instances.items()):
            if not include_values and service not in self._built:
                continue
            if id(instance) in seen:
                continue
            ping = getattr(instance, "ping", None)
            if callable(ping):
                seen.add(id(instance))
                targets.append((self._display(service), ping))
        checks = await asyncio.gather(*(_check(name, ping, float(timeout)) for name, ping in targets))
        return HealthReport(ok=all(c.ok for c in checks), checks=tuple(checks))

    async def aclose(self) -> None:
        """Close the app-lifetime instances the registry created, in reverse creation order.

        Generator factories resume after their ``yield``; other instances are closed with the
        first of: ``await aclose()``, ``close()`` (awaited if it returns an awaitable),
        ``await __aexit__(None, None, None)``, ``__exit__(None, None, None)``. Values and
        overrides are not closed. A failing close is logged (``registry.close_failed``) and the
        others still close. Idempotent; afterwards every resolution raises ``registry.closed``.
        """
        if self._closed:
            return
        self._closed = True
        created, self._created = self._created, []
        try:
            await _aclose_all(created)
        finally:
            self._clear()

    def close(self) -> None:
        """Synchronous :meth:`aclose`, for sync hosts; refuses if anything needs an async close.

        Raises:
            ValidationError: ``registry.async_close_required`` (before closing anything) when an
                instance can only be closed asynchronously; use ``await aclose()`` then.
        """
        if self._closed:
            return
        _refuse_async_close(self._created)
        self._closed = True
        created, self._created = self._created, []
        try:
            _close_all(created)
        finally:
            self._clear()

    def _clear(self) -> None:
        self._instances.clear()
        self._built.clear()
        self._overrides.clear()

    async def __aenter__(self) -> Self:
        """``async with Registry() as registry:`` closes it at exit."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the registry (:meth:`aclose`)."""
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._providers)} registered, {len(self._built)} built"
        return f"<Registry {state}>"


def _refuse_async_close(created: list[_Created]) -> None:
    names = [name for name, instance, finaliser in created if _needs_async_close(instance, finaliser)]
    if names:
        raise ValidationError("registry.async_close_required", services=", ".join(names))


async def _check(name: str, ping: Callable[[], Any], timeout: float) -> HealthCheck:  # noqa: ASYNC109
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout) as scope:
            result = ping()
            if inspect.isawaitable(result):
                result = await result
    except TimeoutError as exc:
        elapsed = round((time.perf_counter() - start) * 1000, 3)
        if scope.expired():
            return HealthCheck(name, False, elapsed, f"timeout after {timeout:g} s")
        return HealthCheck(name, False, elapsed, _describe(exc))
    except Exception as exc:
        return HealthCheck(name, False, round((time.perf_counter() - start) * 1000, 3), _describe(exc))
    elapsed = round((time.perf_counter() - start) * 1000, 3)
    if result is False:
        return HealthCheck(name, False, elapsed, "ping returned False")
    return HealthCheck(name, True, elapsed, None)


def _cycles(edges: Mapping[type[Any], list[type[Any]]]) -> list[tuple[type[Any], ...]]:
    """One cycle (first node repeated at the end) per strongly connected component that has one."""
    order = {node: i for i, node in enumerate(edges)}
    index: dict[type[Any], int] = {}
    low: dict[type[Any], int] = {}
    on_stack: set[type[Any]] = set()
    stack: list[type[Any]] = []
    components: list[list[type[Any]]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[type[Any], int]] = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, i = work[-1]
            succ = edges.get(node, [])
            if i < len(succ):
                work[-1] = (node, i + 1)
                nxt = succ[i]
                if nxt not in edges:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[type[Any]] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member is node:
                        break
                components.append(component)
    cycles: list[tuple[type[Any], ...]] = []
    for component in components:
        members = set(component)
        start = min(component, key=order.__getitem__)
        if len(component) == 1 and start not in edges.get(start, []):
            continue
        # shortest path start -> ... -> start inside the component (breadth first)
        parents: dict[type[Any], type[Any]] = {}
        frontier = [start]
        found = False
        while frontier and not found:
            following: list[type[Any]] = []
            for node in frontier:
                for nxt in edges.get(node, []):
                    if nxt is start:
                        parents[start] = node
                        found = True
                        break
                    if nxt in members and nxt not in parents:
                        parents[nxt] = node
                        following.append(nxt)
                if found:
                    break
            frontier = following
        backwards = [start]
        node = parents[start]
        while node is not start:
            backwards.append(node)
            node = parents[node]
        backwards.append(start)
        cycle = tuple(reversed(backwards))
        cycles.append(cycle)
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


class _Override:
    __slots__ = ("_entered", "_previous", "_registry", "_service", "_value")

    def __init__(self, registry: Registry, service: type[Any], value: object) -> None:
        self._registry = registry
        self._service = service
        self._value = value
        self._previous: Any = _MISSING
        self._entered = False

    def __enter__(self) -> None:
        registry = self._registry
        if self._entered:
            raise ConflictError(
                "registry.override_too_late", service=registry._display(self._service), built="-"
            )
        registry._check_override(self._service)
        self._previous = registry._overrides.get(self._service, _MISSING)
        registry._overrides[self._service] = self._value
        registry._instances[self._service] = self._value
        self._entered = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        registry = self._registry
        service = self._service
        if registry._closed:
            return
        for dependent in registry._built_dependents(service):
            if dependent is service:
                continue
            del registry._built[dependent]
            registry._instances.pop(dependent, None)
        if self._previous is not _MISSING:
            registry._overrides[service] = self._previous
            registry._instances[service] = self._previous
            return
        registry._overrides.pop(service, None)
        provider = registry._providers.get(service)
        if provider is not None and provider.kind == _VALUE:
            registry._instances[service] = provider.target
        else:
            registry._instances.pop(service, None)


# --------------------------------------------------------------------------- Container


class Container:
    """A request scope: request-lifetime instances, created once here and closed at exit.

    Use ``async with registry.container() as c:`` (or ``with`` in sync code, when nothing
    needs an async close). App-lifetime services resolve through the registry. A container
    belongs to one request; concurrent tasks of that request may share it.
    """

    __slots__ = ("_alocks", "_app", "_cache", "_closed", "_created", "_registry")
    _alocks: dict[type[Any], asyncio.Lock]

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._cache: dict[Any, Any] = {}
        self._app: dict[Any, Any] = registry._instances
        self._created: list[_Created] = []
        self._closed = False
        # self._alocks (per-service asyncio locks) is created on first need

    @property
    def registry(self) -> Registry:
        """The registry this container resolves app-lifetime services from."""
        return self._registry

    @property
    def closed(self) -> bool:
        """Whether the container was closed."""
        return self._closed

    def register_local_value(self, service: TypeForm[T], value: T) -> None:
        """Provide *value* for *service* in this container only (e.g. the current request).

        Declare the type with :meth:`Registry.register_local` so :meth:`Registry.validate`
        knows it. A local value shadows any registration of the type within this container,
        and is never closed by the container.

        Raises:
            ConflictError: ``registry.override_too_late`` when *service* was already resolved
                in this container.
        """
        if self._closed:
            raise UnavailableError("registry.closed", service=_type_name(service))
        if not isinstance(service, type):
            raise ValidationError("registry.not_a_type", service=repr(service)[:80])
        if service in self._cache:
            name = self._registry._display(service)
            raise ConflictError("registry.override_too_late", service=name, built=name)
        self._cache[service] = value

    def get(self, service: TypeForm[T]) -> T:
        """Resolve *service* synchronously: request-lifetime ones here, app-lifetime via the registry.

        Raises the errors of :meth:`Registry.get` (request-lifetime services are allowed here),
        plus ``registry.local_missing`` for a declared local value this container lacks.
        """
        cache = self._cache
        if service in cache:
            return cache[service]  # type: ignore[no-any-return]
        app = self._app
        if service in app:
            return app[service]  # type: ignore[no-any-return]
        return self._get_slow(service, ())  # type: ignore[no-any-return]

    async def aget(self, service: TypeForm[T]) -> T:
        """Resolve *service*, awaiting async factories in its chain."""
        cache = self._cache
        if service in cache:
            return cache[service]  # type: ignore[no-any-return]
        app = self._app
        if service in app:
            return app[service]  # type: ignore[no-any-return]
        try:
            return self._get_slow(service, ())  # type: ignore[no-any-return]
        except _AsyncRequiredError:
            return await self._aget_async(service, ())  # type: ignore[no-any-return]

    def _provider(self, service: type[Any], chain: tuple[type[Any], ...]) -> _Provider | None:
        """The request provider of *service*, or ``None`` when the registry resolves it."""
        if self._closed:
            raise UnavailableError("registry.closed", service=_type_name(service))
        registry = self._registry
        try:
            provider = registry._providers.get(service)
        except TypeError:
            return None
        if provider is None or not provider.request or service in registry._overrides:
            return None
        if service in chain:
            registry._lookup(service, chain)  # raises registry.cycle
        return provider

    def _get_slow(self, service: Any, chain: tuple[type[Any], ...]) -> Any:
        provider = self._provider(service, chain)
        if provider is None:
            return self._registry._get_slow(service, chain)
        cache = self._cache
        if service in cache:
            return cache[service]
        value, finaliser = self._registry._build_sync(provider, (*chain, service), self)
        cache[service] = value
        if finaliser is not None or _closer(type(value)):
            self._created.append((provider.name, value, finaliser))
        return value

    async def _aget_slow(self, service: Any, chain: tuple[type[Any], ...]) -> Any:
        try:
            return self._get_slow(service, chain)
        except _AsyncRequiredError:
            return await self._aget_async(service, chain)

    async def _aget_async(self, service: Any, chain: tuple[type[Any], ...]) -> Any:
        provider = self._provider(service, chain)
        if provider is None:
            return await self._registry._aget_slow(service, chain)
        locks = getattr(self, "_alocks", None)
        if locks is None:
            locks = self._alocks = {}
        lock = locks.get(service)
        if lock is None:
            lock = locks[service] = asyncio.Lock()
        async with lock:
            if service in self._cache:
                return self._cache[service]
            if self._closed:
                raise UnavailableError("registry.closed", service=provider.name)
            value, finaliser = await self._registry._build_async(provider, (*chain, service), self)
            self._cache[service] = value
            if finaliser is not None or _closer(type(value)):
                self._created.append((provider.name, value, finaliser))
        return value

    async def aclose(self) -> None:
        """Close the request-lifetime instances created here, in reverse creation order.

        Same rules as :meth:`Registry.aclose`; idempotent; afterwards the container resolves
        nothing (``registry.closed``).
        """
        if self._closed:
            return
        self._closed = True
        self._app = _NO_INSTANCES
        self._cache.clear()
        created = self._created
        if created:
            self._created = []
            await _aclose_all(created)

    def close(self) -> None:
        """Synchronous :meth:`aclose`; refuses (``registry.async_close_required``) if an
        instance needs an async close."""
        if self._closed:
            return
        _refuse_async_close(self._created)
        self._closed = True
        self._app = _NO_INSTANCES
        self._cache.clear()
        created = self._created
        if created:
            self._created = []
            _close_all(created)

    async def __aenter__(self) -> Self:
        """Enter the request scope."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the request scope (:meth:`aclose`)."""
        if self._closed:
            return
        self._closed = True
        self._app = _NO_INSTANCES
        self._cache.clear()
        created = self._created
        if created:
            self._created = []
            await _aclose_all(created)

    def __enter__(self) -> Self:
        """Enter the request scope from sync code."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the request scope synchronously (:meth:`close`)."""
        if self._created:
            self.close()
        else:
            self._closed = True
            self._app = _NO_INSTANCES
            self._cache.clear()

"""Typed settings plus dynamic overrides stored in the database, with change callbacks.

:class:`~maaskit.settings.Settings` is immutable and read once (environment or code). Some
settings are worth changing while the service runs (a log level, a flush interval, a token
TTL): the :class:`SettingsService` keeps *overrides* in a store shared by every replica and
exposes the effective settings as a new, fully validated ``Settings`` object.

Example::

    from maaskit.services.settings import DefaultSettingsService
    from maaskit.settings import Settings
    from maaskit.storage.memory.settings import MemorySettingOverrideStore

    service = DefaultSettingsService(Settings(), MemorySettingOverrideStore())
    await service.reload()                          # pick up stored overrides (at start-up)
    unsubscribe = service.on_change(lambda name, old, new: print(name, old, "->", new))
    await service.set_override("log_level", "debug", actor="admin")
    assert service.get("log_level") == "debug"
    assert service.current().log_level == "debug"
    await service.clear_override("log_level")       # back to the environment's value
    unsubscribe()

Rules:

* an override is validated by building a whole new ``Settings`` (so cross-field rules such as
  ``session_idle_timeout <= session_absolute_timeout`` hold); an invalid value raises
  ``ValidationError("settings.invalid_value")`` and nothing is written;
* unknown names raise ``ValidationError("settings.unknown")``;
* secrets (:func:`maaskit.settings.secret_setting_names`) are never overridden at run time
  (``settings.secret_not_dynamic``): they stay in the environment or a secret store, never in a
  database table;
* settings read once at start-up (:data:`STATIC_SETTINGS`: database and Redis URLs, pool sizes,
  the environment...) are refused with ``settings.static``;
* callbacks run after the write is committed, with ``(name, old, new)`` effective values, only
  when the effective value changed; a failing callback is logged and never propagates.

Replicas pick up each other's overrides with :meth:`SettingsService.reload` (call it
periodically or on an invalidation message).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Protocol, TypeAlias, runtime_checkable

import attrs
import structlog

from maaskit.clock import Clock, SystemClock
from maaskit.errors import ValidationError
from maaskit.settings import Settings, secret_setting_names
from maaskit.storage.ports.settings import OverrideRecord, SettingOverrideStore

__all__ = [
    "STATIC_SETTINGS",
    "ChangeCallback",
    "DefaultSettingsService",
    "SettingOverride",
    "SettingsService",
]

log = structlog.get_logger(__name__)

#: Settings read once when the application starts; overriding them at run time would do nothing
#: (or worse: a database URL stored in that very database).
STATIC_SETTINGS: frozenset[str] = frozenset(
    {
        "environment",
        "database_url",
        "database_pool_size",
        "database_max_overflow",
        "database_pool_timeout",
        "database_pool_recycle",
        "database_echo",
        "auto_migrate",
        "redis_url",
        "cache_backend",
        "cache_max_entries",
    }
)

_MAX_ACTOR_CHARS = 256

#: ``callback(name, old, new)``; may be a plain function or a coroutine function.
ChangeCallback: TypeAlias = Callable[[str, Any, Any], Awaitable[None] | None]


@attrs.frozen
class SettingOverride:
    """A dynamic override as stored.

    Attributes:
        name: the setting (``log_level``).
        value: the validated value in its JSON form (``"debug"``, ``60.0``, ``None``).
        updated_at: when it was written (aware UTC).
        updated_by: who wrote it, if known.
    """

    name: str
    value: Any
    updated_at: datetime
    updated_by: str | None = None


@runtime_checkable
class SettingsService(Protocol):
    """The effective settings: the immutable base plus dynamic overrides."""

    @property
    def base(self) -> Settings:
        """The settings without any override (environment and code)."""
        ...

    def current(self) -> Settings:
        """The effective settings: the base with every override applied (validated)."""
        ...

    def get(self, name: str) -> Any:
        """The effective value of setting *name*; ``settings.unknown`` if there is no such setting."""
        ...

    def overrides(self) -> dict[str, SettingOverride]:
        """The overrides in effect, by setting name."""
        ...

    async def set_override(self, name: str, value: Any, actor: str | None = None) -> None:
        """Validate and store an override of *name*; callbacks run after it is committed."""
        ...

    async def clear_override(self, name: str, actor: str | None = None) -> bool:
        """Remove the override of *name* (back to the base value); ``True`` if there was one."""
        ...

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call *callback(name, old, new)* after every effective change; returns an unsubscribe function."""
        ...

    async def reload(self) -> frozenset[str]:
        """Re-read the stored overrides (written by other replicas); returns the names that changed."""
        ...


class DefaultSettingsService:
    """:class:`SettingsService` over a :class:`~maaskit.storage.ports.settings.SettingOverrideStore`.

    Until the first :meth:`reload` the effective settings are the base settings; the application
    calls ``reload()`` at start-up.

    Args:
        settings: the base settings.
        store: where overrides live (SQL for several replicas, memory for tests).
        clock: time source for ``updated_at``.
        static_settings: names that may not be overridden at run time (default
            :data:`STATIC_SETTINGS`).
    """

    def __init__(
        self,
        settings: Settings,
        store: SettingOverrideStore,
        clock: Clock | None = None,
        static_settings: Iterable[str] = STATIC_SETTINGS,
    ) -> None:
        self._base = settings
        self._store = store
        self._clock = clock or SystemClock()
        self._fields = frozenset(type(settings).model_fields)
        self._secrets = frozenset(secret_setting_names())
        self._static = frozenset(static_settings)
        self._current = settings
        self._overrides: dict[str, SettingOverride] = {}
        self._callbacks: dict[int, ChangeCallback] = {}
        self._tokens = itertools.count()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DefaultSettingsService(overrides={sorted(self._overrides)})"

    # -- reading -------------------------------------------------------------------------------

    @property
    def base(self) -> Settings:
        """The settings without any override (environment and code)."""
        return self._base

    def current(self) -> Settings:
        """The effective settings: the base with every override applied (validated)."""
        return self._current

    def get(self, name: str) -> Any:
        """The effective value of setting *name* (secrets stay ``SecretStr``)."""
        self._check_known(name)
        return getattr(self._current, name)

    def overrides(self) -> dict[str, SettingOverride]:
        """The overrides in effect, by setting name."""
        return dict(self._overrides)

    # -- writing -------------------------------------------------------------------------------

    async def set_override(self, name: str, value: Any, actor: str | None = None) -> None:
        """Validate *value* for *name* and store it; callbacks run after the write is committed.

        Raises:
            ValidationError: ``settings.unknown``, ``settings.secret_not_dynamic``,
                ``settings.static``, ``settings.invalid_value`` (the value, or the settings it
                would produce, is invalid) or ``settings.invalid_actor``. Nothing is written.
            UnavailableError: the store cannot be reached; nothing changed.
        """
        self._check_dynamic(name)
        self._check_actor(actor)
        async with self._lock:
            values = {n: o.value for n, o in self._overrides.items()}
            values[name] = value
            new_settings = self._build(values, name)
            normalized = new_settings.model_dump(mode="json", include={name})[name]
            record = OverrideRecord(
                name=name,
                value_json=json.dumps(normalized, separators=(",", ":")),
                updated_at=self._clock.now(),
                updated_by=actor,
            )
            await self._store.put(record)
            old = getattr(self._current, name)
            self._overrides[name] = SettingOverride(name, normalized, record.updated_at, actor)
            self._current = new_settings
            new = getattr(new_settings, name)
        log.info("settings.override_set", setting=name, actor=actor)
        if old != new:
            await self._notify([(name, old, new)])

    async def clear_override(self, name: str, actor: str | None = None) -> bool:
        """Remove the override of *name*; ``True`` if there was one.

        Raises:
            ValidationError: ``settings.unknown``; or ``settings.invalid_value`` if the remaining
                overrides are not valid without this one (nothing is removed then).
        """
        self._check_known(name)
        self._check_actor(actor)
        async with self._lock:
            if name not in self._overrides:
                return await self._store.delete(name)
            values = {n: o.value for n, o in self._overrides.items() if n != name}
            new_settings = self._build(values, name)
            removed = await self._store.delete(name)
            old = getattr(self._current, name)
            del self._overrides[name]
            self._current = new_settings
            new = getattr(new_settings, name)
        log.info("settings.override_cleared", setting=name, actor=actor)
        if old != new:
            await self._notify([(name, old, new)])
        return removed

    async def reload(self) -> frozenset[str]:
        """Re-read every stored override; returns the names whose effective value changed.

        Stored overrides that are no longer acceptable (unknown or secret names, static settings,
        unreadable JSON, values the current validation rules refuse) are skipped with a warning,
        so one bad row never stops the service from starting.
        """
        records = await self._store.load_all()
        async with self._lock:
            accepted: dict[str, SettingOverride] = {}
            for record in records:
                override = self._decode(record)
                if override is not None:
                    accepted[record.name] = override
            new_settings, accepted = self._build_tolerant(accepted)
            old_settings = self._current
            self._overrides = accepted
            self._current = new_settings
        changes = [
            (name, getattr(old_settings, name), getattr(new_settings, name))
            for name in sorted(self._fields)
            if getattr(old_settings, name) != getattr(new_settings, name)
        ]
        if changes:
            log.info("settings.reloaded", changed=[name for name, _, _ in changes])
            await self._notify(changes)
        return frozenset(name for name, _, _ in changes)

    # -- callbacks -----------------------------------------------------------------------------

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call *callback(name, old, new)* after every effective change.

        The callback may be sync or async. Exceptions it raises are logged (with the setting's
        name, never its value) and swallowed. Returns a function that unsubscribes (idempotent).
        """
        if not callable(callback):
            raise TypeError("on_change needs a callable")
        token = next(self._tokens)
        self._callbacks[token] = callback

        def unsubscribe() -> None:
            self._callbacks.pop(token, None)

        return unsubscribe

    async def _notify(self, changes: list[tuple[str, Any, Any]]) -> None:
        for name, old, new in changes:
            for callback in list(self._callbacks.values()):
                try:
                    result = callback(name, old, new)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception(
                        "settings.callback_failed",
                        setting=name,
                        callback=getattr(callback, "__qualname__", type(callback).__name__),
                    )

    # -- helpers -------------------------------------------------------------------------------

    def _check_known(self, name: object) -> None:
        if not isinstance(name, str) or name not in self._fields:
            shown = name[:128] if isinstance(name, str) else type(name).__name__
            raise ValidationError("settings.unknown", setting=shown)

    def _check_dynamic(self, name: str) -> None:
        self._check_known(name)
        if name in self._secrets:
            raise ValidationError("settings.secret_not_dynamic", setting=name, env_name=name.upper())
        if name in self._static:
            raise ValidationError("settings.static", setting=name, env_name=name.upper())

    @staticmethod
    def _check_actor(actor: object) -> None:
        if actor is None:
            return
        if not isinstance(actor, str) or not actor or len(actor) > _MAX_ACTOR_CHARS:
            raise ValidationError(
                "settings.invalid_actor", reason=f"a non-empty str of at most {_MAX_ACTOR_CHARS} characters"
            )

    def _build(self, values: dict[str, Any], name: str) -> Settings:
        try:
            return self._base.with_changes(**values)
        except ValidationError as exc:
            reason = str(exc.params.get("reason", "invalid"))
            raise ValidationError("settings.invalid_value", setting=name, reason=reason) from None

    def _decode(self, record: OverrideRecord) -> SettingOverride | None:
        name = record.name
        if name not in self._fields or name in self._secrets or name in self._static:
            log.warning("settings.override_ignored", setting=name[:128], reason="not a dynamic setting")
            return None
        try:
            value = json.loads(record.value_json)
        except ValueError:
            log.warning("settings.override_ignored", setting=name, reason="stored value is not JSON")
            return None
        return SettingOverride(name, value, record.updated_at, record.updated_by)

    def _build_tolerant(
        self, overrides: dict[str, SettingOverride]
    ) -> tuple[Settings, dict[str, SettingOverride]]:
        try:
            return self._base.with_changes(**{n: o.value for n, o in overrides.items()}), overrides
        except ValidationError:
            pass
        # Some override (or a combination) is invalid: keep each one that still validates.
        kept: dict[str, SettingOverride] = {}
        settings = self._base
        for name in sorted(overrides):
            candidate = {**{n: o.value for n, o in kept.items()}, name: overrides[name].value}
            try:
                settings = self._base.with_changes(**candidate)
            except ValidationError as exc:
                log.warning("settings.override_ignored", setting=name, reason=exc.params.get("reason"))
                continue
            kept[name] = overrides[name]
        return settings, kept

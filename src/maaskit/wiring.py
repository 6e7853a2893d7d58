"""How the built-in services are wired from :class:`~maaskit.settings.Settings`.

This is the only module (with :mod:`maaskit.app`) that chooses concrete backends: memory,
SQL or Redis, depending on the settings. Services themselves only see Protocols.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maaskit.clock import Clock
from maaskit.services.cache import CacheService
from maaskit.services.settings import DefaultSettingsService, SettingsService
from maaskit.settings import Settings
from maaskit.services.usage import DefaultUsageService, UsageService
from maaskit.storage.ports.settings import SettingOverrideStore
from maaskit.storage.ports.usage import UsageStore
from maaskit.storage.sql.database import Database

if TYPE_CHECKING:
    from maaskit.registry import Registry

__all__ = ["RedisClient", "eager_services", "wire_builtin_services"]


class RedisClient:
    """Registry key for the shared ``redis.asyncio.Redis`` client (only when ``redis_url`` is set)."""


def _redis(settings: Settings) -> Any:
    from maaskit.storage.redis.client import create_redis

    assert settings.redis_url is not None
    return create_redis(settings.redis_url)


def _redis_cache(settings: Settings, redis: RedisClient) -> CacheService:
    from maaskit.storage.redis.cache import RedisCache

    return RedisCache(redis, default_ttl=settings.cache_default_ttl)  # type: ignore[arg-type]


def _memory_cache(settings: Settings, clock: Clock) -> CacheService:
    from maaskit.storage.memory.cache import MemoryCache

    return MemoryCache(settings.cache_max_entries, settings.cache_default_ttl, clock)


def _setting_overrides(database: Database) -> SettingOverrideStore:
    from maaskit.storage.sql.settings import SqlSettingOverrideStore

    return SqlSettingOverrideStore(database)


async def _settings_service(settings: Settings, store: SettingOverrideStore, clock: Clock) -> SettingsService:
    service = DefaultSettingsService(settings, store, clock)
    await service.reload()
    return service


def _usage_store(database: Database) -> UsageStore:
    from maaskit.storage.sql.usage import SqlUsageStore

    return SqlUsageStore(database)


def _usage(settings: Settings, store: UsageStore, clock: Clock) -> UsageService:
    return DefaultUsageService(
        store, clock, flush_interval=settings.usage_flush_interval, batch_size=settings.usage_flush_batch
    )


def wire_builtin_services(registry: Registry, settings: Settings) -> None:
    """Register every built-in service on *registry*, backends chosen from *settings*."""
    if settings.redis_url:
        registry.register_factory(RedisClient, _redis)
    if settings.effective_cache_backend == "redis":
        registry.register_factory(CacheService, _redis_cache)
    else:
        registry.register_factory(CacheService, _memory_cache)
    registry.register_factory(SettingOverrideStore, _setting_overrides)
    registry.register_factory(SettingsService, _settings_service)
    registry.register_factory(UsageStore, _usage_store)
    registry.register_factory(UsageService, _usage)


def eager_services() -> tuple[type[Any], ...]:
    """Services built when the app starts (after migrations), in this order.

    Services with background work (:class:`maaskit.app.BackgroundService`) are started then.
    """
    return (SettingsService, UsageService)

"""How the built-in services are wired from :class:`~maaskit.settings.Settings`.

This is the only module (with :mod:`maaskit.app`) that chooses concrete backends: memory,
SQL or Redis, depending on the settings. Services themselves only see Protocols.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import argon2
import structlog

from maaskit.clock import Clock
from maaskit.registry import Registry
from maaskit.services.access_requests import AccessRequestService, DefaultAccessRequestService
from maaskit.services.admission import AdmissionService, DefaultAdmissionService
from maaskit.services.ai_api import AiApiService, DefaultAiApiService
from maaskit.services.aliases import AliasService
from maaskit.services.api_keys import ApiKeyService, DefaultApiKeyService
from maaskit.services.audit import AuditLog, DefaultAuditLog
from maaskit.services.auth import Authenticator, DefaultAuthenticator
from maaskit.services.budget import ReservationSweeper
from maaskit.services.cache import CacheService
from maaskit.services.catalog import ModelCatalog
from maaskit.services.credentials import CredentialPool
from maaskit.services.hub import HubService
from maaskit.services.integration import IntegrationService
from maaskit.services.keyring import DefaultKeyringService, KeyringService
from maaskit.services.litellm import LiteLLMService
from maaskit.services.login_throttle import LoginThrottle, MemoryLoginThrottle
from maaskit.services.pricing import ModelPrice, PricingService, StaticPricing
from maaskit.services.rate_limit import DefaultLimitsGate, LimitsGate
from maaskit.services.rbac import DefaultRbacService, RbacService
from maaskit.services.secrets import DefaultSecretService, MasterKey, SecretService
from maaskit.services.sessions import DefaultSessionService, SessionService
from maaskit.services.settings import DefaultSettingsService, SettingsService
from maaskit.services.tokens import DefaultTokenService, SigningKey, TokenService
from maaskit.services.upstream import AiohttpTransport, RetryPolicy, Upstream, UpstreamTransport
from maaskit.services.usage import DefaultUsageService, UsageService
from maaskit.services.users import CredentialRevoker, DefaultUserService, UserService
from maaskit.settings import Settings
from maaskit.storage.ports.access_requests import AccessRequestStore
from maaskit.storage.ports.api_keys import ApiKeyStore, KeyInvalidationBus
from maaskit.storage.ports.audit import AuditStore
from maaskit.storage.ports.catalog import CatalogStore
from maaskit.storage.ports.credentials import CredentialStore
from maaskit.storage.ports.downloads import DownloadStore
from maaskit.storage.ports.limits import LimitsStore
from maaskit.storage.ports.rbac import RbacStore
from maaskit.storage.ports.secrets import SecretStore
from maaskit.storage.ports.sessions import SessionStore
from maaskit.storage.ports.settings import SettingOverrideStore
from maaskit.storage.ports.tokens import TokenStore
from maaskit.storage.ports.usage import UsageStore
from maaskit.storage.ports.users import UserStore
from maaskit.storage.sql.database import Database

__all__ = [
    "DEVELOPMENT_PEPPER",
    "RedisClient",
    "eager_services",
    "prices_from_settings",
    "wire_builtin_services",
]

log = structlog.get_logger(__name__)

#: The API-key pepper outside production when ``MAASKIT_KEY_PEPPER`` is unset. It is public, so
#: digests are then plain keyed SHA-256: still safe for 256-bit random keys, but set a real one.
DEVELOPMENT_PEPPER = hashlib.sha256(b"maaskit development pepper - set MAASKIT_KEY_PEPPER").digest()


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


def _api_key_store(database: Database) -> ApiKeyStore:
    from maaskit.storage.sql.api_keys import SqlApiKeyStore

    return SqlApiKeyStore(database)


def _redis_bus(redis: RedisClient) -> KeyInvalidationBus:
    from maaskit.storage.redis.api_keys import RedisKeyInvalidationBus

    return RedisKeyInvalidationBus(redis)  # type: ignore[arg-type]


def _api_keys(
    settings: Settings, store: ApiKeyStore, clock: Clock, bus: KeyInvalidationBus | None = None
) -> ApiKeyService:
    pepper = settings.key_pepper
    if pepper is None:
        log.warning("api_keys.development_pepper", hint="set MAASKIT_KEY_PEPPER (32+ random bytes)")
    return DefaultApiKeyService(
        store,
        clock,
        pepper=DEVELOPMENT_PEPPER if pepper is None else pepper.get_secret_value().encode(),
        cache_ttl=settings.key_cache_ttl,
        rotation_grace=settings.key_rotation_grace,
        invalidation=bus,
    )


def prices_from_settings(settings: Settings) -> dict[str, ModelPrice]:
    """``MAASKIT_MODEL_PRICES`` (USD per million tokens) as per-token :class:`ModelPrice` objects."""
    million = Decimal(1_000_000)
    out: dict[str, ModelPrice] = {}
    for model, price in settings.model_prices.items():
        out[model] = ModelPrice(
            model,
            _decimal_price(model, price, "input") / million,
            _decimal_price(model, price, "output") / million,
            _decimal_price(model, price, "request", "0"),
        )
    return out


def _decimal_price(model: str, price: dict[str, str], part: str, default: str | None = None) -> Decimal:
    """One price of ``MAASKIT_MODEL_PRICES`` as a Decimal; missing or malformed -> ``pricing.invalid``."""
    from maaskit.errors import ValidationError

    raw = price.get(part, default)
    if raw is None:
        raise ValidationError("pricing.invalid", field=f"{model}.{part}", reason="missing")
    try:
        return Decimal(raw)
    except (InvalidOperation, TypeError, ValueError):
        raise ValidationError(
            "pricing.invalid", field=f"{model}.{part}", reason="not a decimal number"
        ) from None


async def _pricing(settings: Settings, catalog: ModelCatalog) -> PricingService:
    """Prices from ``MAASKIT_MODEL_PRICES`` when set, else from the model catalog (LiteLLM sync)."""
    if settings.model_prices:
        return StaticPricing(prices_from_settings(settings))
    from maaskit.services.catalog import CatalogPricing, DefaultModelCatalog

    if not isinstance(catalog, DefaultModelCatalog):
        raise TypeError("catalog pricing needs the DefaultModelCatalog")
    await catalog.refresh()
    return CatalogPricing(catalog)


def _memory_limits(clock: Clock) -> LimitsStore:
    from maaskit.storage.memory.limits import MemoryLimitsStore

    return MemoryLimitsStore(clock)


async def _redis_limits(settings: Settings, redis: RedisClient) -> LimitsStore:
    from maaskit.storage.redis.limits import RedisLimitsStore

    # an open reservation's hash must outlive the sweep timeout, or its amount cannot be given back
    ttl = max(7 * 86400, math.ceil(2 * settings.reservation_timeout + settings.reservation_sweep_interval))
    store = RedisLimitsStore(redis, reservation_ttl=ttl)  # type: ignore[arg-type]
    await store.load_scripts()
    return store


def _sql_limits(database: Database, clock: Clock) -> LimitsStore:
    from maaskit.storage.memory.limits import MemoryLimitsStore
    from maaskit.storage.sql.budget import SqlLedgerStore
    from maaskit.storage.sql.limits import SqlBackedLimitsStore

    return SqlBackedLimitsStore(MemoryLimitsStore(clock), SqlLedgerStore(database, clock))


def _reservation_sweeper(settings: Settings, store: LimitsStore, clock: Clock) -> ReservationSweeper:
    return ReservationSweeper(
        store,
        clock,
        timeout=settings.reservation_timeout,
        interval=settings.reservation_sweep_interval,
    )


def _gate(store: LimitsStore, clock: Clock) -> LimitsGate:
    return DefaultLimitsGate(store, clock)


def _transport(settings: Settings) -> UpstreamTransport:
    return AiohttpTransport()


def _ai_api(settings: Settings, transport: UpstreamTransport, clock: Clock) -> AiApiService:
    return _build_ai_api(settings, transport, clock, None)


def _pooled_ai_api(
    settings: Settings, transport: UpstreamTransport, clock: Clock, pool: CredentialPool
) -> AiApiService:
    return _build_ai_api(settings, transport, clock, pool)


def _build_ai_api(
    settings: Settings, transport: UpstreamTransport, clock: Clock, pool: CredentialPool | None
) -> AiApiService:
    if settings.upstream_url is None:
        from maaskit.errors import ValidationError

        raise ValidationError("upstream.not_configured")
    return DefaultAiApiService(
        Upstream.from_settings(settings),
        transport,
        clock,
        retry=RetryPolicy.from_settings(settings),
        credentials=pool,
    )


def _credential_store(database: Database) -> CredentialStore:
    from maaskit.storage.sql.credentials import SqlCredentialStore

    return SqlCredentialStore(database)


async def _credentials(
    settings: Settings, store: CredentialStore, clock: Clock, registry: Registry
) -> CredentialPool:
    """The upstream credential pool; secrets encrypted when ``MAASKIT_MASTER_KEY`` is set."""
    from maaskit.services.credentials import DefaultCredentialPool

    secrets_service = await registry.aget(SecretService) if settings.master_key else None
    if secrets_service is None:
        log.warning("credentials.secrets_in_memory", hint="set MAASKIT_MASTER_KEY to store them encrypted")
    pool = DefaultCredentialPool(
        store,
        secrets=secrets_service,
        clock=clock,
        strategy=settings.credential_strategy,
        model_map=settings.credential_model_map,
        disable_after=settings.credential_disable_after,
        flush_interval=settings.credential_flush_interval,
    )
    await pool.load()
    return pool


def _admission(
    settings: Settings,
    api_keys: ApiKeyService,
    pricing: PricingService,
    gate: LimitsGate,
    usage: UsageService,
    clock: Clock,
    auth: Authenticator,
    catalog: ModelCatalog,
) -> AdmissionService:
    return DefaultAdmissionService(
        api_keys,
        pricing,
        gate,
        usage,
        clock,
        default_max_tokens=settings.default_max_tokens,
        authorizer=auth,
        catalog=None if settings.model_prices else catalog,
    )


# -- identity and access ---------------------------------------------------------------------


def _audit_store(database: Database) -> AuditStore:
    from maaskit.storage.sql.audit import SqlAuditStore

    return SqlAuditStore(database)


def _rbac_store(database: Database) -> RbacStore:
    from maaskit.storage.sql.rbac import SqlRbacStore

    return SqlRbacStore(database)


def _user_store(database: Database) -> UserStore:
    from maaskit.storage.sql.users import SqlUserStore

    return SqlUserStore(database)


def _access_request_store(database: Database) -> AccessRequestStore:
    from maaskit.storage.sql.access_requests import SqlAccessRequestStore

    return SqlAccessRequestStore(database)


def _audit(store: AuditStore, clock: Clock) -> AuditLog:
    return DefaultAuditLog(store, clock)


def _rbac(store: RbacStore, users: UserStore, audit: AuditLog, clock: Clock) -> RbacService:
    return DefaultRbacService(store, users, audit, clock)


def _throttle(clock: Clock) -> LoginThrottle:
    return MemoryLoginThrottle(clock)


class ApiKeyRevoker:
    """Revokes every API key a user owns (a :class:`~maaskit.services.users.CredentialRevoker`)."""

    def __init__(self, api_keys: ApiKeyService) -> None:
        self._keys = api_keys

    async def revoke_user_credentials(self, user_id: str) -> None:
        """Revoke all of *user_id*'s keys that are not revoked yet."""
        for key in await self._keys.list(owner_id=user_id):
            await self._keys.revoke(key.id)


class SessionRevoker:
    """Destroys every session of a user (a :class:`~maaskit.services.users.CredentialRevoker`)."""

    def __init__(self, sessions: SessionService) -> None:
        self._sessions = sessions

    async def revoke_user_credentials(self, user_id: str) -> None:
        """Destroy all of *user_id*'s sessions."""
        await self._sessions.destroy_user_sessions(user_id)


class TokenRevoker:
    """Revokes every refresh-token family of a user (a :class:`~maaskit.services.users.CredentialRevoker`)."""

    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    async def revoke_user_credentials(self, user_id: str) -> None:
        """Revoke all of *user_id*'s refresh-token families."""
        await self._tokens.revoke_subject(user_id)


def _password_hasher() -> argon2.PasswordHasher:
    # argon2id with argon2-cffi's defaults (t=3, 64 MiB, p=4); a test suite registers the
    # cheapest profile instead (register_value(argon2.PasswordHasher, ...))
    return argon2.PasswordHasher()


def _users(
    store: UserStore,
    rbac: RbacService,
    audit: AuditLog,
    clock: Clock,
    throttle: LoginThrottle,
    api_keys: ApiKeyService,
    sessions: SessionService,
    tokens: TokenService,
    hasher: argon2.PasswordHasher,
) -> UserService:
    revokers: list[CredentialRevoker] = [
        SessionRevoker(sessions),
        TokenRevoker(tokens),
        ApiKeyRevoker(api_keys),
    ]
    return DefaultUserService(store, rbac, audit, clock, hasher=hasher, throttle=throttle, revokers=revokers)


def _authenticator(
    settings: Settings,
    users: UserService,
    rbac: RbacService,
    tokens: TokenService,
    sessions: SessionService,
    api_keys: ApiKeyService,
    audit: AuditLog,
    clock: Clock,
    user_store: UserStore,
) -> Authenticator:
    return DefaultAuthenticator(
        users, rbac, tokens, sessions, api_keys, audit, clock,
        admin_token=settings.admin_token, user_store=user_store,
    )  # fmt: skip


def _derive(secret: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"maaskit:" + purpose).derive(secret)


def _signing_secret(settings: Settings) -> bytes:
    """``MAASKIT_SIGNING_SECRET``; outside production a random per-process one when unset."""
    if settings.signing_secret is not None:
        return settings.signing_secret.get_secret_value().encode()
    if not _warned:
        _warned.append(True)
        log.warning("tokens.ephemeral_signing_secret", hint="set MAASKIT_SIGNING_SECRET (32+ random bytes)")
    return _EPHEMERAL_SECRET


_EPHEMERAL_SECRET = secrets.token_bytes(32)
_warned: list[bool] = []  # warn about the ephemeral secret once per process


def _token_store(database: Database) -> TokenStore:
    from maaskit.storage.sql.tokens import SqlTokenStore

    return SqlTokenStore(database)


def _redis_token_store(redis: RedisClient) -> TokenStore:
    from maaskit.storage.redis.tokens import RedisTokenStore

    return RedisTokenStore(redis)  # type: ignore[arg-type]


def _session_store(database: Database) -> SessionStore:
    from maaskit.storage.sql.sessions import SqlSessionStore

    return SqlSessionStore(database)


def _redis_session_store(redis: RedisClient) -> SessionStore:
    from maaskit.storage.redis.sessions import RedisSessionStore

    return RedisSessionStore(redis)  # type: ignore[arg-type]


def _tokens(settings: Settings, store: TokenStore, clock: Clock) -> TokenService:
    key = SigningKey.hs256(_derive(_signing_secret(settings), b"jwt-hs256"), kid="hs1")
    return DefaultTokenService(
        [key],
        store,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        clock=clock,
        access_ttl=timedelta(seconds=settings.access_token_ttl),
        refresh_ttl=timedelta(seconds=settings.refresh_token_ttl),
    )


def _sessions(settings: Settings, store: SessionStore, clock: Clock) -> SessionService:
    return DefaultSessionService(
        store,
        clock=clock,
        idle_timeout=timedelta(seconds=settings.session_idle_timeout),
        absolute_timeout=timedelta(seconds=settings.session_absolute_timeout),
        csrf_key=_derive(_signing_secret(settings), b"csrf"),
    )


def _secret_store(database: Database) -> SecretStore:
    from maaskit.storage.sql.secrets import SqlSecretStore

    return SqlSecretStore(database)


def _secrets(settings: Settings, store: SecretStore, clock: Clock) -> SecretService:
    if settings.master_key is None:
        from maaskit.errors import ValidationError

        raise ValidationError(
            "config.invalid", setting="MAASKIT_MASTER_KEY", reason="MAASKIT_MASTER_KEY is needed for secrets"
        )
    master = MasterKey(settings.master_key.get_secret_value().encode(), key_id=settings.master_key_id)
    return DefaultSecretService(store, master, clock=clock)


def _keyring() -> KeyringService:
    return DefaultKeyringService()


def _access_requests(
    store: AccessRequestStore, users: UserStore, rbac: RbacService, audit: AuditLog, clock: Clock
) -> AccessRequestService:
    return DefaultAccessRequestService(store, users, rbac, audit, clock)


# -- models and upstreams ----------------------------------------------------------------------


def _default_dir(configured: str | None, name: str) -> str:
    import os
    from pathlib import Path

    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "maaskit" / name)


def _download_store(database: Database) -> DownloadStore:
    from maaskit.storage.sql.downloads import SqlDownloadStore

    return SqlDownloadStore(database)


def _hub(settings: Settings, store: DownloadStore, clock: Clock) -> HubService:
    from maaskit.services.hub import DEFAULT_ENDPOINT, DefaultHubService

    return DefaultHubService(
        store,
        clock,
        cache_dir=_default_dir(settings.hub_cache_dir, "hub"),
        endpoint=settings.hub_endpoint or DEFAULT_ENDPOINT,
        token=settings.hub_token,
    )


def _aliases(settings: Settings) -> AliasService:
    from maaskit.services.aliases import DefaultAliasService

    return DefaultAliasService(_default_dir(settings.aliases_dir, "aliases"))


def _catalog_store(database: Database) -> CatalogStore:
    from maaskit.storage.sql.catalog import SqlCatalogStore

    return SqlCatalogStore(database)


def _catalog(store: CatalogStore, clock: Clock) -> ModelCatalog:
    from maaskit.services.catalog import DefaultModelCatalog

    return DefaultModelCatalog(store, clock=clock)


def _litellm(settings: Settings, clock: Clock) -> LiteLLMService:
    from maaskit.services.litellm import DefaultLiteLLMService, LiteLLMConfig

    return DefaultLiteLLMService(LiteLLMConfig.from_settings(settings), clock=clock)


def _integration(
    database: Database, catalog: ModelCatalog, litellm: LiteLLMService, clock: Clock
) -> IntegrationService:
    from maaskit.services.integration import DefaultIntegrationService
    from maaskit.storage.sql.catalog import SqlSyncLock, SqlSyncRunStore

    return DefaultIntegrationService(
        catalog, litellm, lock=SqlSyncLock(database), runs=SqlSyncRunStore(database), clock=clock
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

    # gateway core: keys, limits, pricing, upstream, admission
    registry.register_factory(ApiKeyStore, _api_key_store)
    if settings.redis_url:
        registry.register_factory(KeyInvalidationBus, _redis_bus)
    registry.register_factory(ApiKeyService, _api_keys)
    registry.register_factory(PricingService, _pricing)
    backend = settings.effective_limits_backend
    limits_factory = (
        _redis_limits if backend == "redis" else _sql_limits if backend == "sql" else _memory_limits
    )
    registry.register_factory(LimitsStore, limits_factory)
    if backend in ("sql", "redis"):  # an in-process store's reservations die with it: no sweep
        registry.register_factory(ReservationSweeper, _reservation_sweeper)
    registry.register_factory(LimitsGate, _gate)
    registry.register_factory(UpstreamTransport, _transport)
    registry.register_value(Registry, registry)
    registry.register_factory(CredentialStore, _credential_store)
    registry.register_factory(CredentialPool, _credentials)
    registry.register_factory(AiApiService, _pooled_ai_api if settings.credential_pool else _ai_api)
    registry.register_factory(AdmissionService, _admission)

    # identity and access
    registry.register_factory(AuditStore, _audit_store)
    registry.register_factory(RbacStore, _rbac_store)
    registry.register_factory(UserStore, _user_store)
    registry.register_factory(AccessRequestStore, _access_request_store)
    registry.register_factory(AuditLog, _audit)
    registry.register_factory(RbacService, _rbac)
    registry.register_factory(LoginThrottle, _throttle)
    if settings.redis_url:
        registry.register_factory(TokenStore, _redis_token_store)
        registry.register_factory(SessionStore, _redis_session_store)
    else:
        registry.register_factory(TokenStore, _token_store)
        registry.register_factory(SessionStore, _session_store)
    registry.register_factory(TokenService, _tokens)
    registry.register_factory(SessionService, _sessions)
    registry.register_factory(SecretStore, _secret_store)
    registry.register_factory(SecretService, _secrets)
    registry.register_factory(KeyringService, _keyring)
    registry.register_factory(argon2.PasswordHasher, _password_hasher)
    registry.register_factory(UserService, _users)
    registry.register_factory(Authenticator, _authenticator)

    # models and upstreams
    registry.register_factory(DownloadStore, _download_store)
    registry.register_factory(HubService, _hub)
    registry.register_factory(AliasService, _aliases)
    registry.register_factory(CatalogStore, _catalog_store)
    registry.register_factory(ModelCatalog, _catalog)
    registry.register_factory(LiteLLMService, _litellm)
    registry.register_factory(IntegrationService, _integration)
    registry.register_factory(AccessRequestService, _access_requests)


def eager_services(settings: Settings) -> tuple[type[Any], ...]:
    """Services built when the app starts (after migrations), in this order.

    Services with background work (:class:`maaskit.app.BackgroundService`) are started then:
    the usage flusher, the key-invalidation listener, with a shared limits backend (SQL or
    Redis) the sweeper of abandoned budget reservations and, with LiteLLM configured, the
    scheduled model sync. Building the admission path here (keys, pricing, limits) also checks its
    configuration at start-up and lets the sync accessors (``app.admission``) work.
    """
    eager: tuple[type[Any], ...] = (SettingsService, UsageService, ApiKeyService, AdmissionService)
    if settings.effective_limits_backend in ("sql", "redis"):
        eager += (ReservationSweeper,)
    if settings.litellm_url and settings.litellm_master_key:
        eager += (IntegrationService,)
    if settings.credential_pool:
        eager += (CredentialPool,)
    if settings.upstream_url:
        eager += (AiApiService,)
    return eager

"""The application: :class:`AppService` and :func:`create_app`.

``create_app`` builds a :class:`~maaskit.registry.Registry` with every built-in service wired
from :class:`~maaskit.settings.Settings`; ``async with`` starts it (migrations, background
work) and stops it cleanly (buffered usage flushed, connections closed in reverse order).

Example::

    import maaskit

    async def main() -> None:
        settings = maaskit.Settings(database_url="sqlite+aiosqlite:///./maaskit.db")
        async with maaskit.create_app(settings) as app:
            report = await app.health()
            print(report.ok)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, runtime_checkable

import structlog

from maaskit.clock import Clock, SystemClock
from maaskit.errors import UnavailableError
from maaskit.i18n import Localizer, default_localizer
from maaskit.registry import HealthReport, Registry
from maaskit.settings import Settings
from maaskit.storage.sql.database import Database

if TYPE_CHECKING:
    from maaskit.services.access_requests import AccessRequestService
    from maaskit.services.admission import AdmissionService
    from maaskit.services.ai_api import AiApiService
    from maaskit.services.aliases import AliasService
    from maaskit.services.api_keys import ApiKeyService
    from maaskit.services.audit import AuditLog
    from maaskit.services.auth import Authenticator
    from maaskit.services.cache import CacheService
    from maaskit.services.catalog import ModelCatalog
    from maaskit.services.credentials import CredentialPool
    from maaskit.services.hub import HubService
    from maaskit.services.integration import IntegrationService
    from maaskit.services.keyring import KeyringService
    from maaskit.services.litellm import LiteLLMService
    from maaskit.services.pricing import PricingService
    from maaskit.services.rate_limit import LimitsGate
    from maaskit.services.rbac import RbacService
    from maaskit.services.secrets import SecretService
    from maaskit.services.sessions import SessionService
    from maaskit.services.settings import SettingsService
    from maaskit.services.tokens import TokenService
    from maaskit.services.usage import UsageService
    from maaskit.services.users import UserService

__all__ = ["AppService", "BackgroundService", "build_registry", "create_app"]

T = TypeVar("T")
log = structlog.get_logger(__name__)


@runtime_checkable
class BackgroundService(Protocol):
    """A service with background work that the app starts after building it."""

    async def start(self) -> None:
        """Start background tasks (the app calls it once, at start-up)."""
        ...


def _database(settings: Settings) -> Database:
    return Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        pool_recycle=settings.database_pool_recycle,
        echo=settings.database_echo,
    )


def build_registry(settings: Settings, overrides: Mapping[type[Any], object] | None = None) -> Registry:
    """A registry with every built-in maaskit service wired from *settings*.

    Applications add their own services to it (``registry.register_class(...)``) before the
    app is started. *overrides* replace services by type (tests use fakes this way).
    """
    from maaskit import wiring

    registry = Registry(overrides=overrides)
    registry.register_value(Settings, settings)
    registry.register_class(Clock, SystemClock)
    registry.register_value(Localizer, default_localizer())
    registry.register_factory(Database, _database)
    wiring.wire_builtin_services(registry, settings)
    return registry


class AppService:
    """Typed access to every maaskit service, plus the app's lifecycle.

    Build it with :func:`create_app` and use it as an async context manager. Built-in services
    are properties (``app.api_keys``, ``app.users``, ...); anything else a user registered is
    reached with :meth:`get` / :meth:`aget`.
    """

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._started = False
        self._background: list[Any] = []
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<AppService {state} database={self.settings.database_url.split(':', 1)[0]}>"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrate (when ``auto_migrate``), build the core services and start background work."""
        async with self._lock:
            if self._started:
                return
            database = await self.registry.aget(Database)
            if self.settings.auto_migrate:
                await database.migrate()
            from maaskit import wiring

            for service_type in wiring.eager_services(self.settings):
                service = await self.registry.aget(service_type)
                if isinstance(service, BackgroundService):
                    await service.start()
                    self._background.append(service)
            self._started = True
            log.debug("maaskit.started", services=len(self.registry.built()))

    async def aclose(self) -> None:
        """Stop background work (flushing buffered usage) and close every service."""
        async with self._lock:
            self._started = False
            self._background.clear()
            await self.registry.aclose()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.registry.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran and :meth:`aclose` did not yet."""
        return self._started

    # -- resolution -------------------------------------------------------------------------

    def get(self, service: type[T]) -> T:
        """Resolve an app-scoped service synchronously (fast once built)."""
        return self.registry.get(service)

    async def aget(self, service: type[T]) -> T:
        """Resolve an app-scoped service, building it (and its dependencies) if needed."""
        return await self.registry.aget(service)

    def _require(self, service: type[T]) -> T:
        if not self._started:
            raise UnavailableError("app.not_started")
        return self.registry.get(service)

    async def health(self, *, timeout: float | None = None) -> HealthReport:  # noqa: ASYNC109
        """Ping every built service that can ping, concurrently, each with *timeout* seconds."""
        return await self.registry.health(timeout=timeout or self.settings.health_timeout)

    # -- core accessors -----------------------------------------------------------------------

    @property
    def database(self) -> Database:
        """The SQL database (``await app.database.migrate()``)."""
        return self.registry.get(Database)

    @property
    def clock(self) -> Clock:
        """The clock every service reads."""
        return self.registry.get(Clock)

    @property
    def localizer(self) -> Localizer:
        """Renders error messages in the caller's locale."""
        return self.registry.get(Localizer)

    # -- service accessors (built on first use) -------------------------------------------------

    @property
    def cache(self) -> CacheService:
        """The cache (memory or Redis)."""
        from maaskit.services.cache import CacheService

        return self.registry.get(CacheService)

    @property
    def settings_service(self) -> SettingsService:
        """Settings plus dynamic overrides stored in the database."""
        from maaskit.services.settings import SettingsService

        return self.registry.get(SettingsService)

    @property
    def api_keys(self) -> ApiKeyService:
        """API keys: create, validate, rotate, revoke."""
        from maaskit.services.api_keys import ApiKeyService

        return self.registry.get(ApiKeyService)

    @property
    def usage(self) -> UsageService:
        """Usage metering and reports."""
        from maaskit.services.usage import UsageService

        return self.registry.get(UsageService)

    @property
    def pricing(self) -> PricingService:
        """Model prices and exact costs."""
        from maaskit.services.pricing import PricingService

        return self.registry.get(PricingService)

    @property
    def limits(self) -> LimitsGate:
        """Rate limits and budget reservations as one atomic step."""
        from maaskit.services.rate_limit import LimitsGate

        return self.registry.get(LimitsGate)

    @property
    def admission(self) -> AdmissionService:
        """The gateway's hot path: admit and settle requests."""
        from maaskit.services.admission import AdmissionService

        return self.registry.get(AdmissionService)

    @property
    def ai_api(self) -> AiApiService:
        """The OpenAI-compatible upstream client (needs ``MAASKIT_UPSTREAM_URL``)."""
        from maaskit.services.ai_api import AiApiService

        return self.registry.get(AiApiService)

    @property
    def users(self) -> UserService:
        """Users, passwords and login."""
        from maaskit.services.users import UserService

        return self.registry.get(UserService)

    @property
    def rbac(self) -> RbacService:
        """Roles and permissions."""
        from maaskit.services.rbac import RbacService

        return self.registry.get(RbacService)

    @property
    def audit(self) -> AuditLog:
        """The append-only audit log."""
        from maaskit.services.audit import AuditLog

        return self.registry.get(AuditLog)

    @property
    def access_requests(self) -> AccessRequestService:
        """Users asking for access; admins approving or rejecting."""
        from maaskit.services.access_requests import AccessRequestService

        return self.registry.get(AccessRequestService)

    @property
    def tokens(self) -> TokenService:
        """Access and refresh JWTs."""
        from maaskit.services.tokens import TokenService

        return self.registry.get(TokenService)

    @property
    def sessions(self) -> SessionService:
        """Browser sessions, CSRF tokens and OAuth state."""
        from maaskit.services.sessions import SessionService

        return self.registry.get(SessionService)

    @property
    def secrets(self) -> SecretService:
        """Encrypted secrets at rest (needs ``MAASKIT_MASTER_KEY``)."""
        from maaskit.services.secrets import SecretService

        return self.registry.get(SecretService)

    @property
    def keyring(self) -> KeyringService:
        """The OS credential store."""
        from maaskit.services.keyring import KeyringService

        return self.registry.get(KeyringService)

    @property
    def hub(self) -> HubService:
        """Model downloads from a Hugging Face-compatible hub (extra ``hub``)."""
        from maaskit.services.hub import HubService

        return self.registry.get(HubService)

    @property
    def aliases(self) -> AliasService:
        """Local model aliases (YAML) and GGUF discovery."""
        from maaskit.services.aliases import AliasService

        return self.registry.get(AliasService)

    @property
    def catalog(self) -> ModelCatalog:
        """The model catalog (prices, limits, capabilities, availability)."""
        from maaskit.services.catalog import ModelCatalog

        return self.registry.get(ModelCatalog)

    @property
    def litellm(self) -> LiteLLMService:
        """LiteLLM's admin API (needs ``MAASKIT_LITELLM_URL`` and ``_MASTER_KEY``)."""
        from maaskit.services.litellm import LiteLLMService

        return self.registry.get(LiteLLMService)

    @property
    def integration(self) -> IntegrationService:
        """Catalog, key and team sync with LiteLLM, scheduled and single-flight."""
        from maaskit.services.integration import IntegrationService

        return self.registry.get(IntegrationService)

    @property
    def auth(self) -> Authenticator:
        """Turns credentials (session, JWT, API key, admin token) into principals; checks permissions."""
        from maaskit.services.auth import Authenticator

        return self.registry.get(Authenticator)

    @property
    def credentials(self) -> CredentialPool:
        """The pool of upstream credentials (built on first ``aget``; async factory)."""
        from maaskit.services.credentials import CredentialPool

        return self.registry.get(CredentialPool)


def create_app(
    settings: Settings | None = None,
    *,
    overrides: Mapping[type[Any], object] | None = None,
    configure: Callable[[Registry], None] | None = None,
) -> AppService:
    """Build (but do not start) the application.

    Args:
        settings: defaults to :meth:`Settings.from_env`.
        overrides: ``{ServiceType: instance}`` replacing built-in services (fakes in tests).
        configure: called with the registry to register the application's own services.

    Use it as ``async with create_app(settings) as app:``.
    """
    settings = settings or Settings.from_env()
    registry = build_registry(settings, overrides)
    if configure is not None:
        configure(registry)
    registry.validate()
    return AppService(registry, settings)

"""Every service contract on one page: the ``typing.Protocol`` of each built-in service.

Depend on these, never on a default implementation, and swap any of them in tests with
``build_test_app(overrides={Protocol: fake})``. Importing this module imports the service
modules (not their storage backends).
"""

from __future__ import annotations

from maaskit.clock import Clock
from maaskit.services.access_requests import AccessRequestService
from maaskit.services.admission import AdmissionService
from maaskit.services.ai_api import AiApiService
from maaskit.services.aliases import AliasService
from maaskit.services.api_keys import ApiKeyService
from maaskit.services.audit import AuditLog
from maaskit.services.auth import Authenticator
from maaskit.services.budget import BudgetLedger
from maaskit.services.cache import CacheService
from maaskit.services.catalog import ModelCatalog
from maaskit.services.credentials import CredentialPool
from maaskit.services.hub import HubService
from maaskit.services.integration import IntegrationService
from maaskit.services.keyring import KeyringService
from maaskit.services.litellm import LiteLLMService
from maaskit.services.login_throttle import LoginThrottle
from maaskit.services.pricing import PricingService
from maaskit.services.rate_limit import LimitsGate, RateLimiter
from maaskit.services.rbac import RbacService
from maaskit.services.secrets import SecretService
from maaskit.services.sessions import SessionService
from maaskit.services.settings import SettingsService
from maaskit.services.tokens import TokenService
from maaskit.services.tokens_estimate import TokenEstimator
from maaskit.services.upstream import UpstreamTransport
from maaskit.services.usage import UsageService
from maaskit.services.users import CredentialRevoker, UserService
from maaskit.storage.ports.api_keys import KeyInvalidationBus

__all__ = [
    "AccessRequestService",
    "AdmissionService",
    "AiApiService",
    "AliasService",
    "ApiKeyService",
    "AuditLog",
    "Authenticator",
    "BudgetLedger",
    "CacheService",
    "Clock",
    "CredentialPool",
    "CredentialRevoker",
    "HubService",
    "IntegrationService",
    "KeyInvalidationBus",
    "KeyringService",
    "LimitsGate",
    "LiteLLMService",
    "LoginThrottle",
    "ModelCatalog",
    "PricingService",
    "RateLimiter",
    "RbacService",
    "SecretService",
    "SessionService",
    "SettingsService",
    "TokenEstimator",
    "TokenService",
    "UpstreamTransport",
    "UsageService",
    "UserService",
]

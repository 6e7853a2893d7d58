"""maaskit: the service layer for LLM gateways and model-serving backends.

Start here::

    import maaskit

    async with maaskit.create_app(maaskit.Settings()) as app:
        print((await app.health()).ok)

The public API is listed in ``__all__``; heavy modules are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from maaskit.errors import (
    ConflictError,
    ErrorType,
    ForbiddenError,
    InternalError,
    MaasError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    UpstreamError,
    ValidationError,
)

if TYPE_CHECKING:
    from maaskit.app import AppService, create_app
    from maaskit.clock import Clock, SystemClock
    from maaskit.i18n import Localizer
    from maaskit.registry import Container, HealthCheck, HealthReport, Lifetime, Registry
    from maaskit.settings import Settings
    from maaskit.storage.sql.database import Database
    from maaskit.sync import BlockingApp

__version__ = "0.1.0"

__all__ = [
    "AppService",
    "BlockingApp",
    "Clock",
    "ConflictError",
    "Container",
    "Database",
    "ErrorType",
    "ForbiddenError",
    "HealthCheck",
    "HealthReport",
    "InternalError",
    "Lifetime",
    "Localizer",
    "MaasError",
    "NotFoundError",
    "QuotaExceededError",
    "RateLimitedError",
    "Registry",
    "Settings",
    "SystemClock",
    "UnauthenticatedError",
    "UnavailableError",
    "UpstreamError",
    "ValidationError",
    "__version__",
    "create_app",
]

_LAZY: dict[str, str] = {
    "AppService": "maaskit.app",
    "create_app": "maaskit.app",
    "BlockingApp": "maaskit.sync",
    "Clock": "maaskit.clock",
    "SystemClock": "maaskit.clock",
    "Container": "maaskit.registry",
    "HealthCheck": "maaskit.registry",
    "HealthReport": "maaskit.registry",
    "Lifetime": "maaskit.registry",
    "Registry": "maaskit.registry",
    "Localizer": "maaskit.i18n",
    "Settings": "maaskit.settings",
    "Database": "maaskit.storage.sql.database",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'maaskit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""Typed settings, read from the environment (``MAASKIT_`` prefix) or given in code.

Settings are validated when they are built: a bad value raises
:class:`maaskit.errors.ValidationError` with code ``config.invalid``, naming the setting
(``MAASKIT_DATABASE_URL``) and what is wrong with it. Secret settings are
``pydantic.SecretStr``: they print as ``**********`` in ``repr``/``str`` and in logs.

Example::

    from maaskit.settings import Settings

    settings = Settings(database_url="sqlite+aiosqlite:///./maaskit.db")
    settings = Settings.from_env()          # MAASKIT_DATABASE_URL=... etc.

Only this module reads environment variables; every service receives its configuration
through its constructor.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from maaskit.errors import ValidationError

__all__ = ["MIN_SECRET_BYTES", "Settings", "secret_setting_names"]

#: Minimum length, in bytes, of signing secrets, peppers and master keys.
MIN_SECRET_BYTES = 32

_SQL_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_HTTP_SCHEMES = ("http", "https")


def _check_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"scheme must be one of {', '.join(schemes)}")
    if parts.scheme in (*_HTTP_SCHEMES, "redis", "rediss") and not parts.hostname:
        raise ValueError("the URL has no host")
    return value


class Settings(BaseSettings):
    """Every setting maaskit reads. Environment variables are ``MAASKIT_<NAME>`` (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix="MAASKIT_",
        extra="forbid",
        frozen=True,
        validate_default=True,
        hide_input_in_errors=True,
    )

    # -- general -------------------------------------------------------------------------
    environment: Literal["development", "test", "production"] = "development"
    default_locale: str = "en"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False

    # -- storage -------------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///:memory:"
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    database_max_overflow: int = Field(default=10, ge=0, le=1000)
    database_pool_timeout: float = Field(default=30.0, gt=0)
    database_pool_recycle: float = Field(default=1800.0, gt=0)
    database_echo: bool = False
    auto_migrate: bool = True
    redis_url: str | None = None

    # -- cache ---------------------------------------------------------------------------
    cache_backend: Literal["auto", "memory", "redis"] = "auto"
    cache_default_ttl: float = Field(default=300.0, gt=0)
    cache_max_entries: int = Field(default=100_000, ge=1)

    # -- secrets (masked everywhere) -------------------------------------------------------
    signing_secret: SecretStr | None = None
    key_pepper: SecretStr | None = None
    master_key: SecretStr | None = None
    master_key_id: str = Field(default="k1", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    admin_token: SecretStr | None = None
    admin_password: SecretStr | None = None

    # -- gateway -------------------------------------------------------------------------
    upstream_url: str | None = None
    upstream_api_key: SecretStr | None = None
    upstream_timeout: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    upstream_connect_timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    upstream_max_retries: int = Field(default=2, ge=0, le=10)
    upstream_retry_after_cap: float = Field(default=10.0, ge=0)
    default_max_tokens: int = Field(default=4096, ge=1)
    #: USD per million tokens, as decimal strings: ``{"gpt-4o-mini": {"input": "0.15", "output": "0.60"}}``.
    model_prices: dict[str, dict[str, str]] = Field(default_factory=dict)
    limits_backend: Literal["auto", "memory", "sql", "redis"] = "auto"
    #: Seconds after which an unsettled budget reservation (its replica crashed) is given back.
    reservation_timeout: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    #: Seconds between two sweeps for such reservations (SQL and Redis limits backends).
    reservation_sweep_interval: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    key_cache_ttl: float = Field(default=60.0, gt=0)
    key_rotation_grace: float = Field(default=86_400.0, ge=0)
    usage_flush_interval: float = Field(default=1.0, gt=0, le=60)
    usage_flush_batch: int = Field(default=5000, ge=1)
    health_timeout: float = Field(default=2.0, gt=0)

    # -- identity ------------------------------------------------------------------------
    jwt_issuer: str = "maaskit"
    jwt_audience: str = "maaskit"
    access_token_ttl: float = Field(default=600.0, gt=0)
    refresh_token_ttl: float = Field(default=30 * 86_400.0, gt=0)
    session_idle_timeout: float = Field(default=1800.0, gt=0)
    session_absolute_timeout: float = Field(default=43_200.0, gt=0)
    #: Name of the admin session cookie; the ``__Host-`` prefix needs ``cookie_secure``.
    session_cookie_name: str = Field(default="__Host-maaskit_session", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: Mark cookies ``Secure`` (HTTPS only). Turn off only for plain-HTTP local development.
    cookie_secure: bool = True
    #: Reverse proxies (CIDRs) whose ``X-Forwarded-For`` is believed for the client IP (login throttling).
    trusted_proxies: list[str] = Field(default_factory=list)

    # -- models and upstreams --------------------------------------------------------------
    litellm_url: str | None = None
    litellm_master_key: SecretStr | None = None
    #: Spend a pool of upstream credentials (stored encrypted) instead of ``upstream_api_key``.
    credential_pool: bool = False
    credential_strategy: Literal["round_robin", "least_used", "weighted"] = "round_robin"
    #: ``{"client model": {"upstream or credential id": "upstream model"}}``.
    credential_model_map: dict[str, dict[str, str]] = Field(default_factory=dict)
    credential_disable_after: int = Field(default=3, ge=1, le=1000)
    credential_flush_interval: float = Field(default=30.0, gt=0)
    hub_endpoint: str | None = None
    hub_token: SecretStr | None = None
    hub_cache_dir: str | None = None
    aliases_dir: str | None = None

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from ``MAASKIT_*`` environment variables; *overrides* win."""
        return cls(**overrides)

    def with_changes(self, **changes: Any) -> Settings:
        """A validated copy with *changes* applied (settings are immutable)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(changes)
        return type(self)(**values)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        checked = _check_url(value, _SQL_SCHEMES)
        if checked is None:
            raise ValueError("must not be empty")
        return checked

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return _check_url(value, _REDIS_SCHEMES)

    @field_validator("upstream_url", "litellm_url", "hub_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_url(value, _HTTP_SCHEMES)

    @field_validator("signing_secret", "key_pepper", "master_key")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes of random data")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: list[str]) -> list[str]:
        out = []
        for entry in value:
            try:
                out.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{entry[:64]!r} is not an IP address or CIDR network") from None
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.session_cookie_name.startswith("__Host-") and not self.cookie_secure:
            raise ValueError("a __Host- cookie needs cookie_secure (or choose another session_cookie_name)")
        if self.cache_backend == "redis" and not self.redis_url:
            raise ValueError("cache_backend 'redis' needs redis_url")
        if self.session_idle_timeout > self.session_absolute_timeout:
            raise ValueError("session_idle_timeout must not exceed session_absolute_timeout")
        if self.environment == "production":
            missing = [n for n in ("signing_secret", "key_pepper", "master_key") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"production needs {', '.join(missing)}")
        return self

    @field_validator("model_prices")
    @classmethod
    def _model_prices(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for model, price in value.items():
            unknown = set(price) - {"input", "output", "request"}
            if unknown:
                raise ValueError(f"model {model!r}: unknown price fields {sorted(unknown)}")
            if "input" not in price or "output" not in price:
                raise ValueError(f"model {model!r}: needs 'input' and 'output' (USD per million tokens)")
        return value

    @property
    def effective_limits_backend(self) -> Literal["memory", "sql", "redis"]:
        """Where rate limits and budgets live: ``auto`` means Redis with ``redis_url``, else SQL."""
        if self.limits_backend == "auto":
            return "redis" if self.redis_url else "sql"
        return self.limits_backend

    @property
    def effective_cache_backend(self) -> Literal["memory", "redis"]:
        """The cache backend in use: ``auto`` means Redis when ``redis_url`` is set."""
        if self.cache_backend == "auto":
            return "redis" if self.redis_url else "memory"
        return self.cache_backend


def secret_setting_names() -> tuple[str, ...]:
    """Names of every setting that holds a secret (masked in logs and reprs)."""
    return tuple(
        name for name, field in Settings.model_fields.items() if "SecretStr" in repr(field.annotation)
    )


def _config_error(exc: pydantic.ValidationError) -> ValidationError:
    problems = []
    first_setting = "settings"
    for err in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
        setting = "MAASKIT_" + loc[0].upper() if loc else "settings"
        if first_setting == "settings":
            first_setting = setting
        reason = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{setting}: {reason}" if loc else reason)
    return ValidationError("config.invalid", setting=first_setting, reason="; ".join(problems))

"""The error hierarchy shared by every maaskit service.

Every error maaskit raises on purpose is a :class:`MaasError`. Each one carries:

* a stable dotted ``code`` (``api_key.revoked``, ``budget.exceeded``, ...) that callers can
  match on and that never changes between releases;
* an :class:`ErrorType`, which adapters map to an HTTP status;
* ``params``: the non-secret values the message refers to (never a key, password or token).

Messages are not written at the raise site: they live in the locale catalogs under
``maaskit/locales/<lang>/*.json`` and are rendered by :class:`maaskit.i18n.Localizer`,
so ``str(error)`` is the English message and an adapter can render the caller's language.

Example::

    from maaskit.errors import NotFoundError

    raise NotFoundError("users.not_found", user_id="u_123")
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "ConflictError",
    "ErrorType",
    "ForbiddenError",
    "InternalError",
    "MaasError",
    "NotFoundError",
    "QuotaExceededError",
    "RateLimitedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UpstreamError",
    "ValidationError",
    "http_status",
]

_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class ErrorType(StrEnum):
    """The broad class of an error; adapters map it to an HTTP status."""

    VALIDATION = "validation"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    UPSTREAM = "upstream"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


_HTTP_STATUS: dict[ErrorType, int] = {
    ErrorType.VALIDATION: 400,
    ErrorType.UNAUTHENTICATED: 401,
    ErrorType.FORBIDDEN: 403,
    ErrorType.NOT_FOUND: 404,
    ErrorType.CONFLICT: 409,
    ErrorType.RATE_LIMITED: 429,
    ErrorType.QUOTA_EXCEEDED: 429,
    ErrorType.UPSTREAM: 502,
    ErrorType.UNAVAILABLE: 503,
    ErrorType.INTERNAL: 500,
}


def http_status(error_type: ErrorType) -> int:
    """Return the HTTP status an adapter sends for *error_type*."""
    return _HTTP_STATUS[error_type]


class MaasError(Exception):
    """Base class of every error maaskit raises on purpose.

    Args:
        code: stable dotted identifier, e.g. ``"api_key.revoked"``; it must have a message
            in every shipped locale catalog (a test checks this).
        **params: non-secret values the message interpolates (``{model}``, ``{limit}``...).
            Never pass a key, password, token or any other secret here.
    """

    type: ClassVar[ErrorType] = ErrorType.INTERNAL
    __slots__ = ("code", "params")

    def __init__(self, code: str, /, **params: Any) -> None:
        if not _CODE_RE.match(code):
            raise ValueError(f"invalid maaskit error code {code!r}: expected a dotted lower-case name")
        self.code = code
        self.params: dict[str, Any] = params
        super().__init__(code)

    @property
    def message(self) -> str:
        """The English message (the default locale)."""
        from maaskit.i18n import default_localizer

        return default_localizer().render(self.code, self.params)

    def render(self, locale: str) -> str:
        """The message in *locale* (falls back to English for an unknown locale)."""
        from maaskit.i18n import default_localizer

        return default_localizer().render(self.code, self.params, locale=locale)

    @property
    def http_status(self) -> int:
        """The HTTP status adapters send for this error."""
        return http_status(self.type)

    def to_dict(self, locale: str = "en") -> dict[str, Any]:
        """An OpenAI-style error object: ``{"message", "type", "code", "param"}``."""
        return {
            "message": self.render(locale),
            "type": self.type.value,
            "code": self.code,
            "param": self.params.get("param"),
        }

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        sep = ", " if params else ""
        return f"{type(self).__name__}({self.code!r}{sep}{params})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.code, self.params))


def _rebuild(cls: type[MaasError], code: str, params: dict[str, Any]) -> MaasError:
    return cls(code, **params)


class ValidationError(MaasError):
    """Bad input: a malformed value, an out-of-range number, an unknown option."""

    type = ErrorType.VALIDATION


class UnauthenticatedError(MaasError):
    """No credential, or one that is malformed, unknown, revoked or expired."""

    type = ErrorType.UNAUTHENTICATED


class ForbiddenError(MaasError):
    """An authenticated principal lacks the permission for this action."""

    type = ErrorType.FORBIDDEN


class NotFoundError(MaasError):
    """The addressed object does not exist (or is not visible to the caller)."""

    type = ErrorType.NOT_FOUND


class ConflictError(MaasError):
    """The action conflicts with the current state (duplicate name, stale version...)."""

    type = ErrorType.CONFLICT


class RateLimitedError(MaasError):
    """A rate limit was hit; ``retry_after`` (seconds) says when to try again."""

    type = ErrorType.RATE_LIMITED

    @property
    def retry_after(self) -> float | None:
        """Seconds until the limit admits the request again, if known."""
        value = self.params.get("retry_after")
        return float(value) if value is not None else None


class QuotaExceededError(MaasError):
    """A budget or quota is spent for the current period."""

    type = ErrorType.QUOTA_EXCEEDED

    @property
    def retry_after(self) -> float | None:
        """Seconds until the period resets, if known."""
        value = self.params.get("retry_after")
        return float(value) if value is not None else None


class UpstreamError(MaasError):
    """The upstream (LLM API, LiteLLM, hub, OAuth provider) failed or answered nonsense."""

    type = ErrorType.UPSTREAM


class UnavailableError(MaasError):
    """A dependency is unreachable or a circuit breaker is open; try again later."""

    type = ErrorType.UNAVAILABLE


class InternalError(MaasError):
    """A bug or broken invariant inside maaskit."""

    type = ErrorType.INTERNAL

"""Framework-neutral HTTP helpers shared by every adapter.

* :func:`bearer_credential` extracts a credential from an ``Authorization`` header, strictly;
* :func:`error_response` maps a :class:`~maaskit.errors.MaasError` to a status, an OpenAI-style
  JSON body and headers (``Retry-After`` on 429/503);
* :func:`rate_limit_headers` renders the ``x-ratelimit-*`` headers OpenAI clients read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from maaskit.clock import to_utc
from maaskit.errors import MaasError, UnauthenticatedError, ValidationError, http_status

__all__ = [
    "MAX_AUTHORIZATION_LENGTH",
    "bearer_credential",
    "check_declared_length",
    "error_body",
    "error_response",
    "parse_json_object",
    "parse_time",
    "rate_limit_headers",
    "repeated_header",
    "single_header",
]

#: Longer ``Authorization`` headers are refused before any parsing.
MAX_AUTHORIZATION_LENGTH = 8192


def bearer_credential(authorization: str | None, *, api_key_header: str | None = None) -> str:
    """The credential of ``Authorization: Bearer <credential>`` (or an ``api-key`` header value).

    Refuses, with ``UnauthenticatedError``: a missing header (``auth.missing``), another scheme,
    a missing or doubled ``Bearer``, whitespace or control characters inside the credential, and
    anything longer than :data:`MAX_AUTHORIZATION_LENGTH` (``auth.malformed``). The credential is
    never part of the error.
    """
    if authorization.__class__ is str and authorization[:7] == "Bearer " and len(authorization) <= 256:
        # the common case, one credential after one "Bearer ": the same checks as below
        credential = authorization[7:]
        if (
            credential.isascii()
            and credential.isprintable()
            and " " not in credential
            and credential
            and credential[:6].lower() != "bearer"
        ):
            return credential
    return _checked_bearer_credential(authorization, api_key_header)


def single_header(values: Sequence[str], name: str) -> str | None:
    """The value of credential header *name* (``None`` when absent).

    Raises:
        UnauthenticatedError: ``auth.malformed`` when it is sent more than once: servers, proxies
            and frameworks disagree on which copy counts, so none is trusted.
    """
    if not values:
        return None
    if len(values) > 1:
        raise repeated_header(name)
    return values[0]


def repeated_header(name: str) -> UnauthenticatedError:
    """The refusal of a credential header sent more than once (see :func:`single_header`)."""
    return UnauthenticatedError("auth.malformed", reason=f"more than one {name} header")


def _checked_bearer_credential(authorization: str | None, api_key_header: str | None) -> str:
    """:func:`bearer_credential` without its fast path: every case, each refusal precise."""
    if authorization is None:
        if api_key_header:
            authorization = "Bearer " + api_key_header
        else:
            raise UnauthenticatedError("auth.missing")
    if len(authorization) > MAX_AUTHORIZATION_LENGTH:
        raise UnauthenticatedError("auth.malformed", reason="too long")
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise UnauthenticatedError("auth.malformed", reason="expected the Bearer scheme")
    credential = credential.strip()
    if not credential:
        raise UnauthenticatedError("auth.malformed", reason="empty credential")
    if credential[:6].lower() == "bearer":
        raise UnauthenticatedError("auth.malformed", reason="doubled Bearer")
    if not credential.isascii() or not credential.isprintable() or " " in credential:
        raise UnauthenticatedError("auth.malformed", reason="invalid characters")
    return credential


def error_body(error: MaasError, locale: str = "en") -> dict[str, Any]:
    """The OpenAI-style error body: ``{"error": {"message", "type", "code", "param"}}``."""
    return {"error": error.to_dict(locale)}


def error_response(error: MaasError, locale: str = "en") -> tuple[int, bytes, dict[str, str]]:
    """``(status, json body bytes, headers)`` for *error*."""
    status = http_status(error.type)
    headers = {"content-type": "application/json"}
    retry_after = error.params.get("retry_after")
    if retry_after is not None and status in (429, 503):
        try:
            seconds = float(retry_after)
        except (TypeError, ValueError):
            seconds = math.nan
        if math.isfinite(seconds):
            headers["retry-after"] = str(max(1, math.ceil(min(seconds, 86_400.0))))
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    return status, json.dumps(error_body(error, locale)).encode(), headers


def rate_limit_headers(remaining: Mapping[str, Any]) -> dict[str, str]:
    """``x-ratelimit-*`` headers from a mapping of ``limit_requests``, ``remaining_requests``,
    ``reset_requests`` (seconds), and the same for ``tokens``; missing values are left out."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        for field in ("limit", "remaining"):
            value = remaining.get(f"{field}_{kind}")
            if value is not None:
                headers[f"x-ratelimit-{field}-{kind}"] = str(int(value))
        reset = remaining.get(f"reset_{kind}")
        if reset is not None:
            headers[f"x-ratelimit-reset-{kind}"] = f"{max(0.0, float(reset)):.3f}s"
    return headers


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def _json_error_reason(raw: bytes) -> str:
    """Why orjson refused *raw* (the error path only: the standard library says what it was)."""
    try:
        json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        return "nested too deeply"
    except (ValueError, UnicodeDecodeError) as exc:
        return "NaN and Infinity are not JSON" if "not valid JSON" in str(exc) else "malformed JSON"
    return "malformed JSON (not UTF-8, an unpaired surrogate or nesting deeper than 1,024 levels)"


def check_declared_length(content_length: str | int | None, limit: int) -> None:
    """Refuse (``http.body_too_large``) a request whose declared length exceeds *limit*."""
    declared: int | None = None
    if isinstance(content_length, int):
        declared = content_length
    elif isinstance(content_length, str) and content_length.isdigit():
        declared = int(content_length)
    if declared is not None and declared > limit:
        raise ValidationError("http.body_too_large", limit=limit)


def parse_json_object(raw: bytes, limit: int) -> dict[str, Any]:
    """Parse a request body strictly: at most *limit* bytes, a JSON object, no NaN/Infinity.

    Parsed with orjson (UTF-8 only, nesting deeper than 1,024 levels refused); an integer beyond
    64 bits becomes a float, which every integer field refuses.

    Raises:
        ValidationError: ``http.body_too_large`` or ``http.invalid_json`` (with the reason).
    """
    if len(raw) > limit:
        raise ValidationError("http.body_too_large", limit=limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationError("http.invalid_json", reason=_json_error_reason(raw)) from None
    if not isinstance(body, dict):
        raise ValidationError("http.invalid_json", reason="the body must be a JSON object")
    return body


def parse_time(value: object, name: str) -> datetime | None:
    """An ISO 8601 time with a time zone from a query string or a JSON body, in UTC (``None`` stays).

    Raises:
        ValidationError: ``http.invalid_request`` naming *name*: not an ISO 8601 string, no time
            zone, or outside what a UTC ``datetime`` can hold (``9999-12-31T23:59:59-14:00``).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("http.invalid_request", reason=f"{name} must be an ISO 8601 time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("http.invalid_request", reason=f"{name} must be an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ValidationError("http.invalid_request", reason=f"{name} needs a time zone")
    try:
        return to_utc(parsed)
    except ValueError:
        raise ValidationError("http.invalid_request", reason=f"{name} is out of range") from None

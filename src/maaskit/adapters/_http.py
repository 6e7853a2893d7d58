"""Framework-neutral HTTP helpers shared by every adapter.

* :func:`bearer_credential` extracts a credential from an ``Authorization`` header, strictly;
* :func:`error_response` maps a :class:`~maaskit.errors.MaasError` to a status, an OpenAI-style
  JSON body and headers (``Retry-After`` on 429/503);
* :func:`rate_limit_headers` renders the ``x-ratelimit-*`` headers OpenAI clients read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from maaskit.errors import MaasError, UnauthenticatedError, http_status

__all__ = [
    "MAX_AUTHORIZATION_LENGTH",
    "bearer_credential",
    "error_body",
    "error_response",
    "rate_limit_headers",
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
    if not credential.isascii() or not credential.isprintable() or " " in credential:
        raise UnauthenticatedError("auth.malformed", reason="invalid characters")
    if credential.lower().startswith("bearer"):
        raise UnauthenticatedError("auth.malformed", reason="doubled Bearer")
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
        headers["retry-after"] = str(max(1, math.ceil(float(retry_after))))
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

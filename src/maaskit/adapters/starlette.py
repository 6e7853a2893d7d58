"""Starlette adapter (extra ``starlette``): lifespan, request containers, errors, health.

Example::

    from starlette.applications import Starlette
    from starlette.routing import Route

    import maaskit
    from maaskit.adapters import starlette as mk

    app_service = maaskit.create_app(settings)
    app = Starlette(routes=[Route("/health", mk.health)], lifespan=mk.lifespan(app_service))
    mk.install(app)

Inside an endpoint: ``mk.get_app(request)`` is the :class:`~maaskit.app.AppService`,
``await mk.container(request)`` the request's :class:`~maaskit.registry.Container`
(request-lifetime services; closed when the response is sent), ``mk.credential(request)`` the
caller's bearer credential. A raised :class:`~maaskit.errors.MaasError` becomes an OpenAI-style
error response with the right status (and ``Retry-After`` on 429/503).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from maaskit.adapters._http import bearer_credential, error_response, single_header
from maaskit.app import AppService
from maaskit.errors import (
    ConflictError,
    ForbiddenError,
    InternalError,
    MaasError,
    NotFoundError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)
from maaskit.registry import Container

__all__ = [
    "STATE_KEY",
    "RequestContainerMiddleware",
    "container",
    "credential",
    "get_app",
    "health",
    "http_error_handler",
    "install",
    "lifespan",
    "maas_error_handler",
]

#: Key of the :class:`AppService` in the lifespan state (``request.state.maaskit``).
STATE_KEY = "maaskit"
_CONTAINER_KEY = "maaskit_container"


def lifespan(app_service: AppService) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """A Starlette ``lifespan`` that starts *app_service* and stops it at shutdown."""

    @asynccontextmanager
    async def _lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with app_service:
            yield {STATE_KEY: app_service}

    return _lifespan


def get_app(request: Request) -> AppService:
    """The :class:`AppService` started by :func:`lifespan` (``app.not_started`` without it)."""
    app: AppService | None = getattr(request.state, STATE_KEY, None)
    if app is None:
        raise UnavailableError("app.not_started")
    return app


async def container(request: Request) -> Container:
    """The request's container (needs :class:`RequestContainerMiddleware`, added by :func:`install`)."""
    found: Container | None = request.scope.get("state", {}).get(_CONTAINER_KEY)
    if found is None:
        found = get_app(request).registry.container()
        request.scope.setdefault("state", {})[_CONTAINER_KEY] = found
    return found


def credential(request: Request) -> str:
    """The bearer credential of the request (``Authorization: Bearer`` or ``api-key``)."""
    headers = request.headers
    return bearer_credential(
        single_header(headers.getlist("authorization"), "Authorization"),
        api_key_header=single_header(headers.getlist("api-key"), "api-key"),
    )


def locale(request: Request) -> str:
    """The caller's locale from ``Accept-Language`` (a shipped one, else English)."""
    accept = request.headers.get("accept-language")
    if not accept:
        return "en"
    return get_app(request).localizer.negotiate(accept)


def error_to_response(error: MaasError, locale: str = "en") -> Response:
    """The OpenAI-style JSON response of *error*."""
    status, body, headers = error_response(error, locale)
    return Response(body, status_code=status, headers=headers)


async def maas_error_handler(request: Request, exc: Exception) -> Response:
    """Exception handler: :class:`MaasError` -> status + OpenAI-style body."""
    assert isinstance(exc, MaasError)
    return error_to_response(exc, locale(request))


#: The error class whose body an ``HTTPException`` of that status gets (others: 4xx validation,
#: 5xx internal).
_BY_STATUS: dict[int, type[MaasError]] = {
    401: UnauthenticatedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitedError,
    503: UnavailableError,
}


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Exception handler: Starlette's ``HTTPException`` with an OpenAI-style body, status kept.

    The router's own 404 and 405 become ``http.not_found`` and ``http.method_not_allowed``
    (localised, ``Allow`` kept); an ``HTTPException`` an endpoint raises with its own detail
    keeps that detail as the message (code ``http.error``).
    """
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    cls = _BY_STATUS.get(status, ValidationError if status < 500 else InternalError)
    if exc.detail == HTTPStatus(status).phrase and status in (404, 405):
        error = cls("http.not_found" if status == 404 else "http.method_not_allowed")
    else:
        error = cls("http.error", detail=str(exc.detail))
    _, body, headers = error_response(error, locale(request))
    headers.update(exc.headers or {})
    return Response(body, status_code=status, headers=headers)


class RequestContainerMiddleware:
    """Pure ASGI middleware closing the request's container (if one was opened) after the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            opened: Container | None = scope.get("state", {}).pop(_CONTAINER_KEY, None)
            if opened is not None:
                await opened.aclose()


def install(app: Starlette, *, openai_http_errors: bool = True) -> None:
    """Add maaskit's error handler and request-container middleware to *app*.

    With *openai_http_errors* (the default) Starlette's ``HTTPException`` (an unknown path, a
    wrong method, or one an endpoint raises) also gets an OpenAI-style error body, like every
    :class:`MaasError` (see :func:`http_error_handler`); OpenAI clients then read every error the
    same way.
    """
    app.add_exception_handler(MaasError, maas_error_handler)
    if openai_http_errors:
        app.add_exception_handler(HTTPException, http_error_handler)
    app.add_middleware(RequestContainerMiddleware)


async def health(request: Request) -> Response:
    """``GET /health``: the structured health report; 200 when healthy, else 503."""
    report = await get_app(request).health()
    return JSONResponse(report.to_dict(), status_code=200 if report.ok else 503)

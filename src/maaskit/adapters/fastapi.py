"""FastAPI adapter (extra ``fastapi``): lifespan, request containers, errors, typed dependencies.

Example::

    from fastapi import FastAPI

    import maaskit
    from maaskit.adapters import fastapi as mk

    app_service = maaskit.create_app(settings)
    app = FastAPI(lifespan=mk.lifespan(app_service))
    mk.install(app)
    app.include_router(mk.health_router())

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, object], admission: mk.AdmissionDep, ai: mk.AiApiDep, maas: mk.AppDep):
        result = await ai.chat_completion(admission.upstream_body(body))
        await maas.admission.settle(admission, result.usage)
        return result.response

FastAPI is Starlette underneath, so this module reuses :mod:`maaskit.adapters.starlette`
(lifespan, error handler, request-container middleware) and adds FastAPI dependencies:
:data:`AppDep`, :data:`ContainerDep`, :data:`CredentialDep`, :data:`AdmissionDep` (or
:func:`admitted` for other options), :func:`service` and :func:`scoped`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from maaskit.adapters import starlette as _starlette
from maaskit.adapters._http import check_declared_length, parse_json_object
from maaskit.adapters.starlette import STATE_KEY, error_to_response, lifespan
from maaskit.app import AppService
from maaskit.errors import UnavailableError, ValidationError
from maaskit.registry import Container
from maaskit.services.admission import Admission
from maaskit.services.ai_api import AiApiService

if TYPE_CHECKING:
    from typing_extensions import TypeForm

__all__ = [
    "STATE_KEY",
    "AdmissionDep",
    "AiApiDep",
    "AppDep",
    "ContainerDep",
    "CredentialDep",
    "admitted",
    "bearer_scheme",
    "get_app",
    "get_container",
    "get_credential",
    "health",
    "health_router",
    "install",
    "lifespan",
    "scoped",
    "service",
]

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: The OpenAPI security scheme (``Authorize`` button); parsing is maaskit's own, strict one.
bearer_scheme = HTTPBearer(auto_error=False, description="A maaskit API key: `Authorization: Bearer mk_...`")


def get_app(request: Request) -> AppService:
    """The :class:`AppService` started by :func:`lifespan` (``app.not_started`` without it)."""
    found: AppService | None = getattr(request.state, STATE_KEY, None)
    if found is None:
        raise UnavailableError("app.not_started")
    return found


async def get_container(request: Request) -> Container:
    """The request's :class:`~maaskit.registry.Container`, closed after the response is sent."""
    get_app(request)
    return await _starlette.container(request)


def get_credential(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
) -> str:
    """The caller's bearer credential (``Authorization: Bearer`` or ``api-key``), strictly parsed."""
    return _starlette.credential(request)


#: ``app: AppDep`` injects the :class:`AppService`.
AppDep = Annotated[AppService, Depends(get_app)]
#: ``container: ContainerDep`` injects the request's container (request-lifetime services).
ContainerDep = Annotated[Container, Depends(get_container)]
#: ``credential: CredentialDep`` injects the bearer credential (401 ``auth.*`` when absent or malformed).
CredentialDep = Annotated[str, Depends(get_credential)]

_services: dict[Any, Callable[..., Any]] = {}
_scoped: dict[Any, Callable[..., Any]] = {}


def service(service_type: TypeForm[T]) -> Callable[[Request], T]:
    """A dependency resolving an app-lifetime service: ``Annotated[X, Depends(service(X))]``.

    The same callable is returned for the same type, so FastAPI resolves it once per request.
    """
    found = _services.get(service_type)
    if found is None:

        def _resolve(request: Request) -> Any:
            return get_app(request).registry.get(service_type)

        _resolve.__name__ = f"service_{getattr(service_type, '__name__', 'service')}"
        found = _services[service_type] = _resolve
    return found


def scoped(service_type: TypeForm[T]) -> Callable[..., Any]:
    """A dependency resolving *service_type* in the request's container (request-lifetime services).

    Use it as ``Annotated[X, Depends(scoped(X))]``; the instance is closed after the response.
    """
    found = _scoped.get(service_type)
    if found is None:

        async def _resolve(container: ContainerDep) -> Any:
            return await container.aget(service_type)

        _resolve.__name__ = f"scoped_{getattr(service_type, '__name__', 'service')}"
        found = _scoped[service_type] = _resolve
    return found


#: ``ai: AiApiDep`` injects the upstream client (:class:`~maaskit.services.ai_api.AiApiService`).
AiApiDep = Annotated[AiApiService, Depends(service(AiApiService))]


async def _json_object(request: Request, limit: int) -> dict[str, Any]:
    check_declared_length(request.headers.get("content-length"), limit)
    return parse_json_object(await request.body(), limit)


def admitted(*, max_output_tokens: int | None = None) -> Callable[..., AsyncIterator[Admission]]:
    """A dependency admitting the request for the ``model`` of its JSON body.

    It runs :meth:`~maaskit.services.admission.AdmissionService.admit` with the bearer credential
    and the body (at most ``max_request_bytes``), puts the ``x-ratelimit-*`` headers on the
    response (when the handler returns data rather than a ``Response``), and releases the
    reservation if the handler raises. The handler settles it (``await app.admission.settle``);
    an admission still unsettled when the response is done is logged as a warning.

    Args:
        max_output_tokens: the completion cap (``0`` for embeddings); default: the body's.
    """

    async def _admit(
        request: Request, response: Response, credential: CredentialDep, app: AppDep
    ) -> AsyncIterator[Admission]:
        body = await _json_object(request, app.settings.max_request_bytes)
        admissions = app.admission
        model: Any = body.get("model")  # admit() validates it
        admission = await admissions.admit(credential, model, body, max_output_tokens=max_output_tokens)
        response.headers.update(admission.headers())
        try:
            yield admission
        except BaseException:
            await admissions.release(admission)
            raise
        if not admission.settled:
            log.warning("maaskit.admission_unsettled", request_id=admission.request_id, model=admission.model)

    return _admit


#: ``admission: AdmissionDep`` admits the request (see :func:`admitted`).
AdmissionDep = Annotated[Admission, Depends(admitted(), scope="request")]


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    reason = "invalid body"
    if errors:
        first = errors[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        reason = f"{where}: {first.get('msg', 'invalid')}"[:200]
    return error_to_response(
        ValidationError("http.invalid_request", reason=reason), _starlette.locale(request)
    )


def install(app: FastAPI, *, openai_validation_errors: bool = True, openai_http_errors: bool = True) -> None:
    """Add maaskit's error handler and request-container middleware to *app*.

    With *openai_validation_errors* FastAPI's request validation errors become 400 responses
    with an OpenAI-style body (``http.invalid_request``) instead of FastAPI's 422 ``detail``.
    With *openai_http_errors* an ``HTTPException`` (FastAPI's or Starlette's: an unknown path, a
    wrong method, or one an endpoint raises) gets an OpenAI-style body too, its status kept
    (see :func:`maaskit.adapters.starlette.http_error_handler`).
    """
    _starlette.install(app, openai_http_errors=openai_http_errors)
    if openai_validation_errors:
        app.add_exception_handler(RequestValidationError, _validation_error_handler)


async def health(app: AppDep) -> Response:
    """``GET /health``: the structured health report; 200 when healthy, else 503."""
    report = await app.health()
    return JSONResponse(report.to_dict(), status_code=200 if report.ok else 503)


def health_router(path: str = "/health", **route_options: Any) -> APIRouter:
    """An :class:`~fastapi.APIRouter` serving :func:`health` at *path* (``app.include_router(...)``)."""
    router = APIRouter()
    router.add_api_route(path, health, methods=["GET"], **route_options)
    return router

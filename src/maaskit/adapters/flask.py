"""Flask adapter (extra ``flask``): maaskit in a WSGI app through one event-loop thread.

maaskit's services are async; Flask views are sync. :class:`MaasFlask` runs the
:class:`~maaskit.app.AppService` on ONE background event-loop thread
(:class:`maaskit.sync.BlockingApp`, anyio's ``BlockingPortal``) and every view calls into it
with :func:`maaskit_call`. Flask's workers are threads (the dev server's ``threaded=True``,
gunicorn's ``gthread``, waitress): all of them share that one loop thread, which is safe
(the portal is thread-safe) and cheap (maaskit's calls mostly wait on I/O). Use one
:class:`MaasFlask` per process; with a forking server start it after the fork (the default:
the app starts lazily, on first use).

Example::

    from flask import Flask

    import maaskit
    from maaskit.adapters import flask as mk

    app = Flask(__name__)
    maas = mk.MaasFlask(app, maaskit.Settings.from_env())   # GET /health is added

    @app.post("/v1/chat/completions")
    def chat():
        body = mk.json_body()                                # strict, size-limited JSON object
        with mk.admission(body) as admitted:                 # released if the block raises
            result = mk.maaskit_call(maas.app.ai_api.chat_completion, admitted.upstream_body(body))
            mk.maaskit_call(maas.app.admission.settle, admitted, result.usage)
        return result.response, 200, admitted.headers()

A raised :class:`~maaskit.errors.MaasError` becomes an OpenAI-style error response with the
right status (and ``Retry-After`` on 429/503). The app stops at interpreter exit or on
:meth:`MaasFlask.shutdown` (buffered usage is flushed).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, Response, current_app, g, jsonify, request

from maaskit.adapters._http import (
    bearer_credential,
    check_declared_length,
    error_response,
    parse_json_object,
    single_header,
)
from maaskit.app import AppService
from maaskit.errors import MaasError, UnavailableError
from maaskit.i18n import default_localizer
from maaskit.registry import Container
from maaskit.services.admission import Admission
from maaskit.settings import Settings
from maaskit.sync import BlockingApp

if TYPE_CHECKING:
    from typing_extensions import TypeForm

__all__ = [
    "EXTENSION_KEY",
    "MaasFlask",
    "admission",
    "container",
    "credential",
    "get_app",
    "get_extension",
    "health_view",
    "json_body",
    "maas_error_handler",
    "maaskit_call",
    "scoped",
]

T = TypeVar("T")

#: Key of the :class:`MaasFlask` in ``flask_app.extensions``.
EXTENSION_KEY = "maaskit"
_CONTAINER_KEY = "maaskit_container"
_BODY_KEY = "maaskit_json_body"


class MaasFlask:
    """Runs an :class:`~maaskit.app.AppService` for a Flask app on one event-loop thread.

    Args:
        flask_app: the Flask app (or call :meth:`init_app` later).
        app: an :class:`AppService` (built, not started), or :class:`Settings` to build one
            (default: settings from the environment).
        overrides: service overrides when building from settings (as :func:`maaskit.create_app`).
        health_path: where :func:`health_view` is routed (``None``: not routed).
        stop_at_exit: stop the app at interpreter exit (an explicit :meth:`shutdown` also works).

    The app starts lazily on first use (:meth:`start` starts it at once).
    """

    def __init__(
        self,
        flask_app: Flask | None = None,
        app: AppService | Settings | None = None,
        *,
        overrides: Mapping[type[Any], object] | None = None,
        health_path: str | None = "/health",
        stop_at_exit: bool = True,
    ) -> None:
        self._source = app
        self._overrides = overrides
        self._health_path = health_path
        self._bridge: BlockingApp | None = None
        self._lock = threading.Lock()
        self._stopped = False
        if stop_at_exit:
            atexit.register(_shutdown_ref, weakref.ref(self))
        if flask_app is not None:
            self.init_app(flask_app)

    def __repr__(self) -> str:
        return f"<MaasFlask {'running' if self.running else 'stopped'}>"

    def init_app(self, flask_app: Flask) -> None:
        """Register the extension, the error handler, request-container teardown and the health route."""
        flask_app.extensions[EXTENSION_KEY] = self
        flask_app.register_error_handler(MaasError, maas_error_handler)
        flask_app.teardown_request(_close_container)
        if self._health_path is not None:
            flask_app.add_url_rule(self._health_path, "maaskit_health", health_view, methods=["GET"])

    @property
    def running(self) -> bool:
        """Whether the loop thread and the app are running."""
        return self._bridge is not None

    def start(self) -> AppService:
        """Start the loop thread and the app (once; later calls return the running app)."""
        bridge = self._bridge
        if bridge is not None:
            return bridge.app
        with self._lock:
            if self._bridge is None:
                if self._stopped:
                    raise UnavailableError("app.not_started")
                if isinstance(self._source, AppService):
                    bridge = BlockingApp(app=self._source)
                else:
                    bridge = BlockingApp(self._source, overrides=self._overrides)
                self._bridge = bridge.start()
            return self._bridge.app

    @property
    def app(self) -> AppService:
        """The running :class:`AppService` (started on first access)."""
        return self.start()

    def call(self, func: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Run ``await func(*args, **kwargs)`` on the app's loop thread and return its result."""
        bridge = self._bridge
        if bridge is None:
            self.start()
            bridge = self._bridge
            assert bridge is not None
        return bridge.call(func, *args, **kwargs)

    def shutdown(self) -> None:
        """Stop the app (flushing buffered usage) and its loop thread; idempotent, final."""
        with self._lock:
            self._stopped = True
            bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.close()


def _shutdown_ref(ref: weakref.ref[MaasFlask]) -> None:
    ext = ref()
    if ext is not None:
        ext.shutdown()


def get_extension() -> MaasFlask:
    """The :class:`MaasFlask` of the current Flask app."""
    ext: MaasFlask | None = current_app.extensions.get(EXTENSION_KEY)
    if ext is None:
        raise UnavailableError("app.not_started")
    return ext


def get_app() -> AppService:
    """The current Flask app's running :class:`AppService` (started on first use)."""
    return get_extension().app


def maaskit_call(func: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    """Run ``await func(*args, **kwargs)`` on the maaskit loop thread (from a view) and return the result."""
    return get_extension().call(func, *args, **kwargs)


def credential() -> str:
    """The bearer credential of the current request (``Authorization: Bearer`` or ``api-key``)."""
    headers = request.headers
    return bearer_credential(
        single_header(headers.getlist("Authorization"), "Authorization"),
        api_key_header=single_header(headers.getlist("api-key"), "api-key"),
    )


def container() -> Container:
    """The current request's :class:`~maaskit.registry.Container`, closed when the request ends."""
    found: Container | None = g.get(_CONTAINER_KEY)
    if found is None:
        found = get_app().registry.container()
        setattr(g, _CONTAINER_KEY, found)
    return found


def scoped(service_type: TypeForm[T]) -> T:
    """Resolve *service_type* in the request's container (request-lifetime services)."""
    resolved: T = maaskit_call(container().aget, service_type)
    return resolved


def _close_container(_exc: BaseException | None) -> None:
    opened: Container | None = g.pop(_CONTAINER_KEY, None)
    if opened is None:
        return
    ext: MaasFlask | None = current_app.extensions.get(EXTENSION_KEY)
    if ext is not None and ext.running:
        ext.call(opened.aclose)


@contextmanager
def admission(
    body: Mapping[str, Any] | None = None, *, max_output_tokens: int | None = None
) -> Iterator[Admission]:
    """Admit the current request for ``body["model"]``; release the reservation if the block raises.

    *body* defaults to :func:`json_body`. Settle inside the block
    (``maaskit_call(get_app().admission.settle, admitted, usage)``).
    """
    app = get_app()
    if body is None:
        body = json_body()
    model: Any = body.get("model")  # admit() validates it
    admitted = maaskit_call(
        app.admission.admit, credential(), model, body, max_output_tokens=max_output_tokens
    )
    try:
        yield admitted
    except BaseException:
        maaskit_call(app.admission.release, admitted)
        raise


def json_body() -> dict[str, Any]:
    """The current request's JSON object body, parsed strictly (once per request).

    Refuses, with ``ValidationError``: a body over ``max_request_bytes``
    (``http.body_too_large``), malformed JSON, NaN/Infinity or a non-object (``http.invalid_json``).
    """
    cached: dict[str, Any] | None = g.get(_BODY_KEY)
    if cached is None:
        cached = _json_object(get_app().settings.max_request_bytes)
        setattr(g, _BODY_KEY, cached)
    return cached


def _json_object(limit: int) -> dict[str, Any]:
    check_declared_length(request.content_length, limit)
    return parse_json_object(request.get_data(cache=True), limit)


def _locale() -> str:
    accept = request.headers.get("Accept-Language")
    if not accept:
        return "en"
    ext: MaasFlask | None = current_app.extensions.get(EXTENSION_KEY)
    localizer = ext.app.localizer if ext is not None and ext.running else default_localizer()
    return localizer.negotiate(accept)


def maas_error_handler(error: MaasError) -> Response:
    """Flask error handler: :class:`MaasError` -> status + OpenAI-style JSON body."""
    status, body, headers = error_response(error, _locale())
    return Response(body, status=status, headers=headers)


def health_view() -> Response:
    """``GET /health``: the structured health report; 200 when healthy, else 503."""
    report = maaskit_call(get_app().health)
    response = jsonify(report.to_dict())
    response.status_code = 200 if report.ok else 503
    return response

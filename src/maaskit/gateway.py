"""The reference gateway: an OpenAI-compatible endpoint in front of one upstream (``maaskit serve``).

It shows how little code a gateway needs on top of maaskit: every decision (who may call, how
much is left, what it cost) is a service call; this module only speaks HTTP.

Routes:

* ``POST /v1/chat/completions`` (streamed and not), ``POST /v1/embeddings``, ``GET /v1/models``:
  ``Authorization: Bearer mk_...``;
* ``/admin/keys`` (create, list, get, rotate, revoke, enable/disable, budget) and
  ``/admin/usage``, plus the admin API of :mod:`maaskit.admin_api` (login, tokens, users, roles,
  audit, access requests): every route behind an RBAC permission, for a session cookie (+ CSRF),
  a bearer JWT, an API key owned by a user, or the break-glass ``MAASKIT_ADMIN_TOKEN`` (role
  ``admin``);
* ``GET /health``.

Example::

    import uvicorn
    from maaskit.gateway import create_gateway

    uvicorn.run(create_gateway(settings), host="127.0.0.1", port=4200)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from maaskit.adapters import starlette as mk
from maaskit.adapters._http import (
    bearer_credential,
    check_declared_length,
    error_body,
    error_response,
    parse_json_object,
    parse_time,
    repeated_header,
)
from maaskit.admin_api import AdminApi
from maaskit.app import AppService, create_app
from maaskit.errors import MaasError, ValidationError
from maaskit.money import from_micros, micros_to_str, parse_micros, to_micros
from maaskit.services.admission import Admission, AdmissionService, SettleResult
from maaskit.services.ai_api import AiApiService, ChatStream, Usage
from maaskit.services.api_keys import ApiKey, ApiKeyService
from maaskit.services.audit import AuditOutcome, DetailValue
from maaskit.services.usage import UsageService
from maaskit.settings import Settings

__all__ = ["GatewayApp", "create_gateway", "key_to_dict"]

_Owner = Callable[[], Awaitable[str]]
#: An admin route's work: its response and the id of the key it affected (``None``: none).
_Action = Callable[[], Awaitable[tuple[Response, str | None]]]


async def _body_owner(request: Request) -> str:
    owner = (await _json_body(request, 64 * 1024)).get("owner_id")
    if not isinstance(owner, str):
        raise ValidationError("http.invalid_request", reason="owner_id must be a string")
    return owner


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    check_declared_length(request.headers.get("content-length"), limit)
    return parse_json_object(await request.body(), limit)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def key_to_dict(key: ApiKey) -> dict[str, Any]:
    """The admin API's JSON view of a key (never the secret or its digest)."""
    return {
        "id": key.id,
        "owner_id": key.owner_id,
        "team_id": key.team_id,
        "name": key.name,
        "hint": key.hint,
        "allowed_models": sorted(key.allowed_models),
        "budget_micros": key.budget_micros,
        "budget": None if key.budget_micros is None else str(from_micros(key.budget_micros)),
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "expires_at": _iso(key.expires_at),
        "enabled": key.enabled,
        "revoked_at": _iso(key.revoked_at),
        "created_at": _iso(key.created_at),
        "rotation_counter": key.rotation_counter,
        "previous_valid_until": _iso(key.previous_valid_until),
    }


class _Gateway:
    """The endpoints, bound to one :class:`AppService` (resolved once, at first use)."""

    def __init__(self, app_service: AppService) -> None:
        self.app = app_service
        self.settings = app_service.settings
        self.admin_api = AdminApi(app_service)
        self._resolved = False

    async def _services(self) -> None:
        if self._resolved:
            return
        # aget: some services (pricing from the model catalog) are built by async factories
        aget = self.app.registry.aget
        self.admission = await aget(AdmissionService)
        self.ai = await aget(AiApiService)
        self.keys = await aget(ApiKeyService)
        self.usage = await aget(UsageService)
        self.upstream_name = getattr(getattr(self.ai, "upstream", None), "name", None)
        self._resolved = True

    # -- OpenAI-compatible endpoints --------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        await self._services()
        credential = mk.credential(request)
        # a stream handed over by the data plane arrives with its body already parsed
        parsed: dict[str, Any] | None = request.scope.get("state", {}).pop(_PARSED_BODY, None)
        body = parsed if parsed is not None else await _json_body(request, self.settings.max_request_bytes)
        admission = await self.admission.admit(credential, body.get("model"), body)  # type: ignore[arg-type]
        upstream_body = admission.upstream_body(body)
        if body.get("stream") is True:  # its headers go out before its cost is known
            return await self._stream(admission, upstream_body, _headers(admission), mk.locale(request))
        try:
            result = await self.ai.chat_completion(upstream_body)
        except BaseException:
            await self.admission.release(admission, upstream=self.upstream_name)
            raise
        settled = await self.admission.settle(admission, result.usage, upstream=self.upstream_name)
        return Response(
            result.body,
            status_code=result.status,
            headers=_headers(admission, settled),
            media_type="application/json",
        )

    async def _stream(
        self, admission: Any, upstream_body: dict[str, Any], headers: dict[str, str], locale: str
    ) -> Response:
        stream: ChatStream

        async def settle(usage: Usage) -> None:
            status: Literal["ok", "error", "cancelled"] = (
                "ok" if stream.completed else "error" if stream.failed else "cancelled"
            )
            await self.admission.settle(
                admission, usage, status=status, streamed=True, upstream=self.upstream_name
            )

        try:  # serialising the body can fail too: nothing may keep the reservation
            stream = self.ai.stream_chat_completion(upstream_body, on_complete=settle)
            await stream.start()
        except BaseException:
            await self.admission.release(admission, upstream=self.upstream_name)
            raise

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield chunk
            except MaasError as error:
                # The headers are out: the error goes to the client as the last event, the way
                # OpenAI streams report one (its clients raise it), and the stream ends cleanly.
                yield b"data: " + orjson.dumps(error_body(error, locale)) + b"\n\n"
            finally:
                await stream.aclose()

        headers["cache-control"] = "no-cache"
        return StreamingResponse(chunks(), headers=headers, media_type="text/event-stream")

    async def embeddings(self, request: Request) -> Response:
        await self._services()
        credential = mk.credential(request)
        body = await _json_body(request, self.settings.max_request_bytes)
        admission = await self.admission.admit(credential, body.get("model"), body, max_output_tokens=0)  # type: ignore[arg-type]
        try:
            result = await self.ai.embeddings(body)
        except BaseException:
            await self.admission.release(admission, upstream=self.upstream_name)
            raise
        settled = await self.admission.settle(admission, result.usage, upstream=self.upstream_name)
        return Response(result.body, headers=_headers(admission, settled), media_type="application/json")

    async def models(self, request: Request) -> Response:
        await self._services()
        key = await self.keys.validate(mk.credential(request))
        if self.settings.model_prices:
            names = sorted(self.settings.model_prices)
        else:
            names = [m.model_id for m in await self.app.catalog.list_models(available_only=True)]
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "maaskit"}
            for name in names
            if key.allows_model(name)
        ]
        return JSONResponse({"object": "list", "data": data})

    # -- admin endpoints ----------------------------------------------------------------------

    async def _admin(
        self,
        request: Request,
        permission: str,
        action: _Action,
        *,
        own: str | None = None,
        owner: _Owner | None = None,
    ) -> Response:
        """Authenticate (bearer or session cookie + CSRF), require *permission* through RBAC, run *action*.

        With *own*, the principal may instead hold *own* when ``await owner()`` is its user (its own
        keys). With *owner*, the principal must also hold every permission of the key's owner when
        the owner is a user (:meth:`~maaskit.services.auth.Authenticator.require_covers`): a key acts
        with all of its owner's permissions. The static admin token is the break-glass ``admin`` role.

        The outcome is audited after *action* ran (``admin.gateway``; the target is the affected key
        id, else the route): ``success``, or ``denied``/``failure`` with the error code. A refused
        permission is audited as ``auth.forbidden``.
        """
        await self._services()
        principal = await self.admin_api.principal(request)
        auth = await self.admin_api.authenticator()
        owner = _once(owner) if owner is not None else None
        if own is not None and owner is not None:
            await auth.require_for_owner(principal, permission, owner, own_permission=own)
        else:
            await auth.require(principal, permission)
        route = f"{request.method} {request.url.path}"[:256]
        target: str = request.path_params.get("key_id") or route
        details: dict[str, DetailValue] = {"permission": permission, "route": route}
        try:
            if owner is not None:
                await auth.require_covers(principal, await owner())
            response, affected = await action()
        except MaasError as exc:
            outcome = AuditOutcome.DENIED if exc.http_status in (401, 403) else AuditOutcome.FAILURE
            await auth.audit(
                principal, "admin.gateway", target, outcome, details={**details, "reason": exc.code}
            )
            raise
        except Exception:
            await auth.audit(
                principal, "admin.gateway", target, AuditOutcome.FAILURE,
                details={**details, "reason": "internal_error"},
            )  # fmt: skip
            raise
        await auth.audit(
            principal, "admin.gateway", affected or target, AuditOutcome.SUCCESS, details=details
        )
        return response

    def _key_owner(self, request: Request) -> _Owner:
        async def owner() -> str:
            return (await self.keys.get(request.path_params["key_id"])).owner_id

        return owner

    async def create_key(self, request: Request) -> Response:
        async def action() -> tuple[Response, str | None]:
            body = await _json_body(request, 64 * 1024)
            owner = body.get("owner_id")
            if not isinstance(owner, str):
                raise ValidationError("http.invalid_request", reason="owner_id must be a string")
            name = body.get("name")
            if not isinstance(name, str):
                raise ValidationError("http.invalid_request", reason="name is required (1 to 256 characters)")
            created = await self.keys.create(
                owner,
                team_id=_optional(body, "team_id", str),
                name=name,
                allowed_models=tuple(_optional(body, "allowed_models", list) or ()),
                budget_micros=_budget(body),
                rpm_limit=_optional(body, "rpm_limit", int),
                tpm_limit=_optional(body, "tpm_limit", int),
                expires_at=parse_time(body.get("expires_at"), "expires_at"),
            )
            out = {**key_to_dict(created.key), "secret": created.secret}
            return JSONResponse(out, status_code=201), created.key.id

        return await self._admin(
            request, "keys:manage", action, own="keys:create", owner=lambda: _body_owner(request)
        )

    async def list_keys(self, request: Request) -> Response:
        async def action() -> tuple[Response, str | None]:
            params = request.query_params
            keys = await self.keys.list(
                owner_id=params.get("owner_id"),
                team_id=params.get("team_id"),
                include_revoked=params.get("include_revoked") == "true",
            )
            return JSONResponse({"data": [key_to_dict(k) for k in keys]}), None

        return await self._admin(request, "keys:read", action)

    async def get_key(self, request: Request) -> Response:
        async def action() -> tuple[Response, str | None]:
            return JSONResponse(key_to_dict(await self.keys.get(request.path_params["key_id"]))), None

        return await self._admin(request, "keys:read", action)

    async def rotate_key(self, request: Request) -> Response:
        async def action() -> tuple[Response, str | None]:
            body = await _json_body(request, 64 * 1024) if await request.body() else {}
            grace = body.get("grace_seconds")
            if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int | Decimal)):
                raise ValidationError("http.invalid_request", reason="grace_seconds must be a number")
            rotation = await self.keys.rotate(
                request.path_params["key_id"],
                grace_seconds=None if grace is None else float(grace),
                idempotency_key=request.headers.get("idempotency-key"),
            )
            out = key_to_dict(rotation.key)
            out.update(secret=rotation.secret, replayed=rotation.replayed)
            return JSONResponse(out), rotation.key.id

        return await self._admin(
            request, "keys:manage", action, own="keys:update", owner=self._key_owner(request)
        )

    async def revoke_key(self, request: Request) -> Response:
        async def action() -> tuple[Response, str | None]:
            key = await self.keys.revoke(request.path_params["key_id"])
            return JSONResponse(key_to_dict(key)), key.id

        return await self._admin(
            request, "keys:manage", action, own="keys:revoke", owner=self._key_owner(request)
        )

    async def enable_key(self, request: Request) -> Response:
        async def action() -> tuple[Response, str | None]:
            enabled = request.url.path.endswith("/enable")
            key = await self.keys.set_enabled(request.path_params["key_id"], enabled)
            return JSONResponse(key_to_dict(key)), key.id

        return await self._admin(
            request, "keys:manage", action, own="keys:update", owner=self._key_owner(request)
        )

    async def key_budget(self, request: Request) -> Response:
        async def action() -> tuple[Response, str | None]:
            body = await _json_body(request, 64 * 1024)
            key = await self.keys.update_budget(request.path_params["key_id"], _budget(body))
            return JSONResponse(key_to_dict(key)), key.id

        return await self._admin(request, "budgets:manage", action, owner=self._key_owner(request))

    async def usage_report(self, request: Request) -> Response:
        async def action() -> tuple[Response, str | None]:
            params = request.query_params
            start = parse_time(params.get("start"), "start") or datetime.min.replace(
                tzinfo=self.app.clock.now().tzinfo
            )
            end = parse_time(params.get("end"), "end") or self.app.clock.now()
            await self.usage.flush()
            rows = await self.usage.report(start, end, key_id=params.get("key_id"), model=params.get("model"))
            data = [
                {
                    "key_id": r.key_id,
                    "model": r.model,
                    "day": None if r.day is None else r.day.isoformat(),
                    "requests": r.requests,
                    "errors": r.errors,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "cost_micros": r.cost_micros,
                    "cost": str(from_micros(r.cost_micros)),
                }
                for r in rows
            ]
            return JSONResponse({"data": data}), None

        return await self._admin(request, "usage:read", action)


def _once(owner: _Owner) -> _Owner:
    """*owner*, looked up at most once per request (the permission check and the owner check share it)."""
    found: list[str] = []

    async def cached() -> str:
        if not found:
            found.append(await owner())
        return found[0]

    return cached


def _headers(admission: Admission, settled: SettleResult | None = None) -> dict[str, str]:
    """The response's rate-limit headers and ``x-maaskit-budget-remaining``.

    The budget left after the request: with *settled*, after its actual cost (the part of the
    reservation it did not use is back, on every budget it was reserved on); without (a stream,
    whose headers go out first), after its reservation.
    """
    headers = admission.decision.headers()
    budgets = admission.decision.budget_available_micros  # what Admission.remaining reports
    if budgets:
        left = min(budgets)
        if settled is not None and not settled.replayed:
            left += admission.reserved_micros - settled.cost_micros
        headers["x-maaskit-budget-remaining"] = micros_to_str(left)
    return headers


def _optional(body: Mapping[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ValidationError("http.invalid_request", reason=f"{name} must be a {kind.__name__}")
    return value


def _budget(body: Mapping[str, Any]) -> int | None:
    """``budget_micros`` (an integer) or ``budget`` (a decimal string in USD); floats are refused."""
    if "budget_micros" in body and body["budget_micros"] is not None:
        return parse_micros(body["budget_micros"], field="budget_micros")
    budget = body.get("budget")
    if budget is None:
        return None
    if not isinstance(budget, str):
        raise ValidationError("money.invalid", field="budget", reason="give the amount as a decimal string")
    micros = to_micros(budget, field="budget")
    return parse_micros(micros, field="budget")


async def _root(_request: Request) -> Response:
    return JSONResponse({"service": "maaskit gateway"})


#: Scope-state key under which the data plane hands a parsed body to the control plane.
_PARSED_BODY = "maaskit.parsed_body"


class GatewayApp:
    """The gateway's ASGI app: a lean data plane in front of the Starlette control plane.

    Non-streamed ``POST /v1/chat/completions`` — the request a gateway serves millions of times —
    is handled in plain ASGI (no routing, request or response objects: Starlette's layers cost
    about a fifth of a pass-through's throughput). Everything else, streams included (whose
    client disconnects Starlette's ``StreamingResponse`` watches), goes to the Starlette app,
    which also runs the lifespan. Attributes not defined here (``state``, ``routes``...) are the
    Starlette app's.
    """

    def __init__(self, gateway: _Gateway, control: Starlette) -> None:
        self._gw = gateway
        self.control = control
        self._limit = gateway.settings.max_request_bytes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.control, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions" or scope["method"] != "POST":
            await self.control(scope, receive, send)
            return
        locale = "en"
        authorization = api_key = declared = repeated = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    repeated = "Authorization"
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")
            elif name == b"api-key":
                if api_key is not None:
                    repeated = "api-key"
                api_key = value.decode("latin-1")
            elif name == b"accept-language":
                locale = self._gw.app.localizer.negotiate(value.decode("latin-1"))
        try:
            if repeated is not None:
                raise repeated_header(repeated)
            credential = bearer_credential(authorization, api_key_header=api_key)
            check_declared_length(declared, self._limit)
            raw = await _read_body(receive, self._limit)
            body = parse_json_object(raw, self._limit)
        except MaasError as error:
            await _send_error(send, error, locale)
            return
        if body.get("stream") is True:  # the control plane's streaming route, body already parsed
            scope.setdefault("state", {})[_PARSED_BODY] = body
            await self.control(scope, _replay(raw, receive), send)
            return
        # The completion itself, in this coroutine: every frame between the server's task and
        # the upstream call is walked again at each resumption while the upstream answers.
        gw = self._gw
        try:
            if not gw._resolved:
                await gw._services()
            admission = await gw.admission.admit(credential, body.get("model"), body)  # type: ignore[arg-type]
        except MaasError as error:
            await _send_error(send, error, locale)
            return
        try:
            # What admission read goes upstream, serialised again (orjson: ~0.2 us), never the
            # client's bytes: with a duplicate key, or a key spelled with \u escapes, an upstream
            # could read another model or cap than the one checked and priced.
            upstream_body = admission.upstream_body(body)
            result = await gw.ai.chat_completion(upstream_body, raw=_json_bytes(upstream_body))
        except BaseException as exc:
            await gw.admission.release(admission, upstream=gw.upstream_name)
            if isinstance(exc, MaasError):
                await _send_error(send, exc, locale)
                return
            raise
        settled = await gw.admission.settle(admission, result.usage, upstream=gw.upstream_name)
        body_bytes = result.body
        # a known length spares every client the chunked framing uvicorn falls back to otherwise
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body_bytes))]
        for name, value in _headers(admission, settled).items():
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        await send({"type": "http.response.start", "status": result.status, "headers": headers})
        await send({"type": "http.response.body", "body": body_bytes})


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ValidationError("http.invalid_request", reason="the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ValidationError("http.body_too_large", limit=limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _json_bytes(body: dict[str, Any]) -> bytes | None:
    """*body* (parsed by orjson: plain JSON values) as compact JSON text, ``None`` if orjson
    cannot write it (nested deeper than 254 levels: the service's own serialiser decides)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return None


def _replay(raw: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()  # then the real channel (disconnects)

    return replay


async def _send_error(send: Send, error: MaasError, locale: str) -> None:
    status, body, headers = error_response(error, locale)
    raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw_headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def create_gateway(settings: Settings | None = None, *, app_service: AppService | None = None) -> GatewayApp:
    """The reference gateway as an ASGI app (its lifespan starts and stops the maaskit app)."""
    service = app_service or create_app(settings)
    gw = _Gateway(service)
    routes = [
        Route("/", _root),
        Route("/health", mk.health),
        Route("/v1/chat/completions", gw.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", gw.embeddings, methods=["POST"]),
        Route("/v1/models", gw.models),
        Route("/admin/keys", gw.create_key, methods=["POST"]),
        Route("/admin/keys", gw.list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", gw.get_key, methods=["GET"]),
        Route("/admin/keys/{key_id}/rotate", gw.rotate_key, methods=["POST"]),
        Route("/admin/keys/{key_id}/revoke", gw.revoke_key, methods=["POST"]),
        Route("/admin/keys/{key_id}/enable", gw.enable_key, methods=["POST"]),
        Route("/admin/keys/{key_id}/disable", gw.enable_key, methods=["POST"]),
        Route("/admin/keys/{key_id}/budget", gw.key_budget, methods=["PUT"]),
        Route("/admin/usage", gw.usage_report, methods=["GET"]),
        *gw.admin_api.routes(),
    ]
    app = Starlette(routes=routes, lifespan=mk.lifespan(service))
    mk.install(app)
    app.state.maaskit_gateway = gw
    return GatewayApp(gw, app)

"""The admin HTTP API (Starlette routes): login, tokens, users, roles, audit and access requests.

Example::

    from starlette.applications import Starlette

    import maaskit
    from maaskit.adapters import starlette as mk
    from maaskit.admin_api import AdminApi

    app_service = maaskit.create_app(settings)
    app = Starlette(routes=AdminApi(app_service).routes(), lifespan=mk.lifespan(app_service))
    mk.install(app)              # MaasError -> OpenAI-style error body

The reference gateway (:func:`maaskit.gateway.create_gateway`) mounts these routes.

Authentication, on every route except login and the token endpoints:

* ``Authorization: Bearer <credential>``: an access JWT (``POST /admin/token``), an API key owned by
  a user (it carries that user's permissions) or the break-glass ``MAASKIT_ADMIN_TOKEN``;
* or the session cookie set by ``POST /admin/login`` (``__Host-maaskit_session``: ``Secure``,
  ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, no ``Domain``). Cookie-authenticated ``POST``,
  ``PUT``, ``PATCH`` and ``DELETE`` requests need the ``X-CSRF-Token`` header returned by the login
  (else 403 ``session.csrf_invalid``); bearer requests need no CSRF token.

Every route is behind an RBAC permission (:data:`ROUTE_PERMISSIONS`), checked by
:meth:`maaskit.services.auth.Authenticator.require`, and every call is written to the audit log
(``admin.<operation>``, with the outcome). Errors are OpenAI-style bodies with the error code.
Passwords and tokens are never echoed, except the tokens issued by ``/admin/token`` and
``/admin/token/refresh`` (once, with ``Cache-Control: no-store``).

The client IP used for login throttling is the socket peer, or the right-most address of
``X-Forwarded-For`` that is not a trusted proxy, **only** when the peer itself is in
``MAASKIT_TRUSTED_PROXIES``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from maaskit.adapters import starlette as mk
from maaskit.adapters._http import check_declared_length, parse_json_object, parse_time
from maaskit.app import AppService
from maaskit.errors import ForbiddenError, MaasError, UnauthenticatedError, ValidationError
from maaskit.services.access_requests import AccessRequest, AccessRequestService
from maaskit.services.audit import AuditEvent, AuditLog, AuditOutcome
from maaskit.services.auth import Authenticator, Principal
from maaskit.services.rbac import RbacService, Role
from maaskit.services.sessions import SessionService
from maaskit.services.tokens import TokenPair
from maaskit.services.users import UNSET, User, UserService

__all__ = [
    "CSRF_HEADER",
    "ROUTE_PERMISSIONS",
    "AdminApi",
    "admin_routes",
    "client_ip",
]

#: The header carrying the CSRF token on cookie-authenticated state-changing requests.
CSRF_HEADER: Final = "x-csrf-token"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_LIMIT: Final = 64 * 1024
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``(method, path) -> permission`` of every admin route; ``None``: any authenticated caller
#: (``""``: public). ``POST /admin/users/{user_id}/password`` needs ``users:manage`` unless users
#: change their own password with ``old_password``.
ROUTE_PERMISSIONS: Final[dict[tuple[str, str], str | None]] = {
    ("POST", "/admin/login"): "",
    ("POST", "/admin/token"): "",
    ("POST", "/admin/token/refresh"): "",
    ("POST", "/admin/logout"): None,
    ("GET", "/admin/users"): "users:read",
    ("POST", "/admin/users"): "users:manage",
    ("GET", "/admin/users/{user_id}"): "users:read",
    ("PATCH", "/admin/users/{user_id}"): "users:manage",
    ("DELETE", "/admin/users/{user_id}"): "users:manage",
    ("POST", "/admin/users/{user_id}/disable"): "users:manage",
    ("POST", "/admin/users/{user_id}/enable"): "users:manage",
    ("POST", "/admin/users/{user_id}/password"): "users:manage",
    ("GET", "/admin/roles"): "roles:read",
    ("POST", "/admin/users/{user_id}/roles"): "roles:assign",
    ("DELETE", "/admin/users/{user_id}/roles/{role}"): "roles:assign",
    ("GET", "/admin/audit"): "audit:read",
    ("POST", "/admin/access-requests"): None,
    ("GET", "/admin/access-requests"): "access_requests:read",
    ("POST", "/admin/access-requests/{request_id}/approve"): "access_requests:review",
    ("POST", "/admin/access-requests/{request_id}/reject"): "access_requests:review",
}


def _networks(cidrs: Sequence[str]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _trusted(address: str, proxies: Sequence[_Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[_Network]) -> str | None:
    """The client address for throttling: *peer*, or what trusted proxies report.

    ``X-Forwarded-For`` (*forwarded_for*) is read only when *peer* is a trusted proxy; then the
    right-most entry that is not itself a trusted proxy is the client. A malformed entry stops the
    walk and the last trusted hop is used, so a forged value can never replace the peer.
    """
    if peer is None or not forwarded_for or not _trusted(peer, trusted_proxies):
        return peer
    current = peer
    for hop in reversed(forwarded_for.split(",")):
        candidate = hop.strip()
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            return current
        current = candidate
        if not _trusted(candidate, trusted_proxies):
            return candidate
    return current


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _user_dict(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "display_name": user.display_name,
        "enabled": user.enabled,
        "protected": user.protected,
        "created_at": _iso(user.created_at),
        "updated_at": _iso(user.updated_at),
        "password_changed_at": _iso(user.password_changed_at),
    }


def _role_dict(role: Role) -> dict[str, Any]:
    return {
        "name": role.name,
        "description": role.description,
        "permissions": sorted(role.permissions),
        "parents": sorted(role.parents),
        "builtin": role.builtin,
        "effective_permissions": sorted(role.effective_permissions),
    }


def _event_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "created_at": _iso(event.created_at),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome.value,
        "details": dict(event.details),
    }


def _request_dict(req: AccessRequest) -> dict[str, Any]:
    return {
        "id": req.id,
        "user_id": req.user_id,
        "reason": req.reason,
        "status": req.status.value,
        "created_at": _iso(req.created_at),
        "updated_at": _iso(req.updated_at),
        "decided_at": _iso(req.decided_at),
        "decided_by": req.decided_by,
        "role": req.role,
        "decision_reason": req.decision_reason,
    }


def _pair_dict(pair: TokenPair, now: datetime) -> dict[str, Any]:
    return {
        "token_type": "Bearer",
        "access_token": pair.access.token,
        "expires_in": max(0, int((pair.access.expires_at - now).total_seconds())),
        "refresh_token": pair.refresh.token,
        "refresh_expires_in": max(0, int((pair.refresh.expires_at - now).total_seconds())),
    }


def _string(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValidationError("http.invalid_request", reason=f"{name} must be a string")
    return value


def _req(body: dict[str, Any], name: str) -> str:
    value = _string(body, name)
    assert value is not None  # _string raises for a missing required field
    return value


def _limit(value: str | None, default: int = 100) -> int:
    if value is None:
        return default
    if not value.isdigit() or len(value) > 6:
        raise ValidationError("http.invalid_request", reason="limit must be a positive integer")
    return int(value)


async def _body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    check_declared_length(request.headers.get("content-length"), _BODY_LIMIT)
    raw = await request.body()
    if optional and not raw.strip():
        return {}
    return parse_json_object(raw, _BODY_LIMIT)


_Handler = Callable[[Request, Principal], Awaitable[tuple[Response, str | None]]]


class AdminApi:
    """The admin endpoints bound to one :class:`~maaskit.app.AppService` (services resolved at first use).

    Args:
        app_service: the application (started by the host's lifespan).

    :meth:`principal` is public so other admin routes (the gateway's key and usage routes) share the
    same authentication, CSRF rule and RBAC check.
    """

    def __init__(self, app_service: AppService) -> None:
        self.app = app_service
        settings = app_service.settings
        self.cookie_name = settings.session_cookie_name
        self.cookie_secure = settings.cookie_secure
        self.cookie_max_age = int(settings.session_absolute_timeout)
        self.trusted_proxies = _networks(settings.trusted_proxies)
        self._resolved = False

    def __repr__(self) -> str:
        return f"AdminApi(cookie={self.cookie_name!r}, trusted_proxies={len(self.trusted_proxies)})"

    async def _services(self) -> None:
        if self._resolved:
            return
        aget = self.app.registry.aget
        self.auth = await aget(Authenticator)
        self.users = await aget(UserService)
        self.rbac = await aget(RbacService)
        self.audit = await aget(AuditLog)
        self.sessions = await aget(SessionService)
        self.access_requests = await aget(AccessRequestService)
        self._resolved = True

    async def authenticator(self) -> Authenticator:
        """The :class:`~maaskit.services.auth.Authenticator` (resolved on first use)."""
        await self._services()
        return self.auth

    # -- authentication -------------------------------------------------------------------------

    async def principal(self, request: Request) -> Principal:
        """Authenticate *request*: bearer credential first, else the session cookie (+ CSRF check).

        Raises:
            UnauthenticatedError: no credential (``auth.missing``) or an invalid one.
            ForbiddenError: ``session.csrf_invalid`` for a cookie-authenticated state-changing
                request without the right ``X-CSRF-Token``.
        """
        await self._services()
        headers = request.headers
        if "authorization" in headers or "api-key" in headers:
            return await self.auth.authenticate_bearer(mk.credential(request))
        raw = request.cookies.get(self.cookie_name)
        if not raw:
            raise UnauthenticatedError("auth.missing")
        principal = await self.auth.authenticate_session(raw)
        if request.method not in _SAFE_METHODS:
            try:
                self.sessions.verify_csrf(raw, headers.get(CSRF_HEADER))
            except ForbiddenError as exc:
                await self.auth.audit(
                    principal, "auth.csrf", request.url.path[:200], AuditOutcome.DENIED,
                    details={"reason": exc.code},
                )  # fmt: skip
                raise
        return principal

    def client_ip(self, request: Request) -> str | None:
        """The client address of *request* (see :func:`client_ip`)."""
        peer = request.client.host if request.client is not None else None
        return client_ip(peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)

    @staticmethod
    def _actor(principal: Principal) -> str | None:
        """``actor_id`` for UserService calls: the user, or ``None`` (trusted) for the admin token."""
        if principal.kind == "admin_token":
            return None
        if principal.user_id is None:
            raise ForbiddenError("auth.user_required")
        return principal.user_id

    def _endpoint(self, action: str, permission: str | None, handler: _Handler) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            principal = await self.principal(request)
            if permission is not None:
                await self.auth.require(principal, permission)
            params = request.path_params
            target = params.get("user_id") or params.get("request_id") or "-"
            try:
                response, created = await handler(request, principal)
            except MaasError as exc:
                outcome = AuditOutcome.DENIED if exc.http_status in (401, 403) else AuditOutcome.FAILURE
                await self.auth.audit(principal, action, target, outcome, details={"reason": exc.code})
                raise
            await self.auth.audit(principal, action, created or target, AuditOutcome.SUCCESS)
            return response

        endpoint.__name__ = action.replace(".", "_")
        return endpoint

    # -- login, logout, tokens ------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """``POST /admin/login``: ``{"username", "password"}`` -> session cookie + ``{"csrf_token"}``."""
        await self._services()
        body = await _body(request)
        username, password = _req(body, "username"), _req(body, "password")
        principal, session_id, csrf = await self.auth.login(
            username,
            password,
            client_ip=self.client_ip(request),
            previous_session_id=request.cookies.get(self.cookie_name),
        )
        response = JSONResponse(
            {"csrf_token": csrf, "user_id": principal.user_id, "roles": sorted(principal.roles)},
            headers={"cache-control": "no-store"},
        )
        self._set_cookie(response, session_id, self.cookie_max_age)
        return response

    def _set_cookie(self, response: Response, value: str, max_age: int) -> None:
        response.set_cookie(
            self.cookie_name,
            value,
            max_age=max_age,
            path="/",
            secure=self.cookie_secure,
            httponly=True,
            samesite=cast(Any, "Strict"),
        )

    async def logout(self, request: Request) -> Response:
        """``POST /admin/logout``: ends the session (cookie) or revokes the bearer JWT (and an
        optional ``{"refresh_token"}``'s family)."""
        principal = await self.principal(request)
        body = await _body(request, optional=True)
        refresh = _string(body, "refresh_token", required=False)
        session_id = request.cookies.get(self.cookie_name) if principal.kind == "session" else None
        access = mk.credential(request) if principal.kind == "jwt" else None
        await self.auth.logout(principal, session_id=session_id, access_token=access, refresh_token=refresh)
        response = JSONResponse({"ok": True})
        if session_id is not None:
            self._set_cookie(response, "", 0)
        return response

    async def token(self, request: Request) -> Response:
        """``POST /admin/token``: password grant ``{"username", "password"}`` -> access + refresh JWT."""
        await self._services()
        body = await _body(request)
        username, password = _req(body, "username"), _req(body, "password")
        pair = await self.auth.issue_tokens(username, password, client_ip=self.client_ip(request))
        return JSONResponse(_pair_dict(pair, self.app.clock.now()), headers={"cache-control": "no-store"})

    async def token_refresh(self, request: Request) -> Response:
        """``POST /admin/token/refresh``: ``{"refresh_token"}`` -> a new pair (the old one is spent)."""
        await self._services()
        body = await _body(request)
        token = _req(body, "refresh_token")
        pair = await self.auth.refresh(token)
        return JSONResponse(_pair_dict(pair, self.app.clock.now()), headers={"cache-control": "no-store"})

    # -- users ----------------------------------------------------------------------------------

    async def _list_users(self, request: Request, _p: Principal) -> tuple[Response, str | None]:
        q = request.query_params
        enabled = {"true": True, "false": False, None: None}.get(q.get("enabled"))
        users = await self.users.list(enabled=enabled, after=q.get("after"), limit=_limit(q.get("limit")))
        return JSONResponse({"data": [_user_dict(u) for u in users]}), None

    async def _create_user(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        body = await _body(request)
        roles = body.get("roles") or []
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValidationError("http.invalid_request", reason="roles must be a list of strings")
        username, password = _req(body, "username"), _req(body, "password")
        user = await self.users.add(
            username,
            password,
            email=_string(body, "email", required=False),
            display_name=_string(body, "display_name", required=False),
            roles=roles,
            actor_id=self._actor(p),
        )
        return JSONResponse(_user_dict(user), status_code=201), user.id

    async def _get_user(self, request: Request, _p: Principal) -> tuple[Response, str | None]:
        user = await self.users.get(request.path_params["user_id"])
        out = _user_dict(user)
        out["roles"] = [{"role": a.role, "team_id": a.team_id} for a in await self.rbac.user_roles(user.id)]
        return JSONResponse(out), None

    async def _update_user(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        body = await _body(request)
        unknown = set(body) - {"email", "display_name"}
        if unknown:
            raise ValidationError("http.invalid_request", reason="only email and display_name can change")
        user = await self.users.update(
            request.path_params["user_id"],
            email=_string(body, "email", required=False) if "email" in body else UNSET,
            display_name=_string(body, "display_name", required=False) if "display_name" in body else UNSET,
            actor_id=self._actor(p),
        )
        return JSONResponse(_user_dict(user)), None

    async def _delete_user(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        await self.users.delete(request.path_params["user_id"], actor_id=self._actor(p))
        return Response(status_code=204), None

    async def _disable_user(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        user = await self.users.disable(request.path_params["user_id"], actor_id=self._actor(p))
        self.auth.invalidate(user.id)
        return JSONResponse(_user_dict(user)), None

    async def _enable_user(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        user = await self.users.enable(request.path_params["user_id"], actor_id=self._actor(p))
        self.auth.invalidate(user.id)
        return JSONResponse(_user_dict(user)), None

    async def _password(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        body = await _body(request)
        user_id = request.path_params["user_id"]
        new = _req(body, "password")
        old = _string(body, "old_password", required=False)
        if old is not None and p.user_id == user_id and p.kind != "api_key":
            await self.users.change_password(user_id, old, new)
        else:
            await self.auth.require(p, "users:manage")
            await self.users.set_password(user_id, new, actor_id=self._actor(p))
        return Response(status_code=204), None

    # -- roles ----------------------------------------------------------------------------------

    async def _list_roles(self, _r: Request, _p: Principal) -> tuple[Response, str | None]:
        return JSONResponse({"data": [_role_dict(r) for r in await self.rbac.list_roles()]}), None

    async def _assign_role(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        body = await _body(request)
        role = _req(body, "role")
        team_id = _string(body, "team_id", required=False)
        actor = await self.auth.acting_user(p)
        a = await self.rbac.assign_role(actor, request.path_params["user_id"], role, team_id=team_id)
        self.auth.invalidate(a.user_id)
        return JSONResponse(
            {"user_id": a.user_id, "role": a.role, "team_id": a.team_id}, status_code=201
        ), None

    async def _revoke_role(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        user_id = request.path_params["user_id"]
        actor = await self.auth.acting_user(p)
        team_id = request.query_params.get("team_id")
        await self.rbac.revoke_role(actor, user_id, request.path_params["role"], team_id=team_id)
        self.auth.invalidate(user_id)
        return Response(status_code=204), None

    # -- audit ----------------------------------------------------------------------------------

    async def _audit(self, request: Request, _p: Principal) -> tuple[Response, str | None]:
        q = request.query_params
        events = await self.audit.query(
            actor=q.get("actor"),
            target=q.get("target"),
            action=q.get("action"),
            since=parse_time(q.get("since"), "since"),
            until=parse_time(q.get("until"), "until"),
            limit=_limit(q.get("limit")),
        )
        return JSONResponse({"data": [_event_dict(e) for e in events]}), None

    # -- access requests ------------------------------------------------------------------------

    async def _request_access(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        if p.user_id is None or p.kind == "api_key":
            raise ForbiddenError("auth.user_required")
        body = await _body(request)
        reason = _req(body, "reason")
        req = await self.access_requests.request_access(p.user_id, reason)
        return JSONResponse(_request_dict(req), status_code=201), req.id

    async def _list_requests(self, request: Request, _p: Principal) -> tuple[Response, str | None]:
        q = request.query_params
        reqs = await self.access_requests.list(
            status=q.get("status"), user_id=q.get("user_id"), limit=_limit(q.get("limit"))
        )
        return JSONResponse({"data": [_request_dict(r) for r in reqs]}), None

    async def _approve(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        body = await _body(request)
        role = _req(body, "role")
        actor = await self.auth.acting_user(p)
        req = await self.access_requests.approve(request.path_params["request_id"], actor, role)
        self.auth.invalidate(req.user_id)
        return JSONResponse(_request_dict(req)), None

    async def _reject(self, request: Request, p: Principal) -> tuple[Response, str | None]:
        body = await _body(request, optional=True)
        actor = await self.auth.acting_user(p)
        req = await self.access_requests.reject(
            request.path_params["request_id"], actor, _string(body, "reason", required=False)
        )
        return JSONResponse(_request_dict(req)), None

    # -- routes ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Every admin route (mount them in a Starlette app that ran :func:`maaskit.adapters.starlette.install`)."""
        e = self._endpoint
        p = ROUTE_PERMISSIONS
        u = "/admin/users/{user_id}"
        ar = "/admin/access-requests"
        return [
            Route("/admin/login", self.login, methods=["POST"]),
            Route("/admin/logout", self.logout, methods=["POST"]),
            Route("/admin/token", self.token, methods=["POST"]),
            Route("/admin/token/refresh", self.token_refresh, methods=["POST"]),
            Route("/admin/users", e("admin.users_listed", p["GET", "/admin/users"], self._list_users), methods=["GET"]),
            Route("/admin/users", e("admin.user_created", p["POST", "/admin/users"], self._create_user), methods=["POST"]),
            Route(u, e("admin.user_read", p["GET", u], self._get_user), methods=["GET"]),
            Route(u, e("admin.user_updated", p["PATCH", u], self._update_user), methods=["PATCH"]),
            Route(u, e("admin.user_deleted", p["DELETE", u], self._delete_user), methods=["DELETE"]),
            Route(u + "/disable", e("admin.user_disabled", p["POST", u + "/disable"], self._disable_user), methods=["POST"]),
            Route(u + "/enable", e("admin.user_enabled", p["POST", u + "/enable"], self._enable_user), methods=["POST"]),
            # the permission is checked inside: users may change their own password with the old one
            Route(u + "/password", e("admin.password_set", None, self._password), methods=["POST"]),
            Route("/admin/roles", e("admin.roles_listed", p["GET", "/admin/roles"], self._list_roles), methods=["GET"]),
            Route(u + "/roles", e("admin.role_assigned", p["POST", u + "/roles"], self._assign_role), methods=["POST"]),
            Route(u + "/roles/{role}", e("admin.role_revoked", p["DELETE", u + "/roles/{role}"], self._revoke_role), methods=["DELETE"]),
            Route("/admin/audit", e("admin.audit_read", p["GET", "/admin/audit"], self._audit), methods=["GET"]),
            Route(ar, e("admin.access_requested", None, self._request_access), methods=["POST"]),
            Route(ar, e("admin.access_requests_listed", p["GET", ar], self._list_requests), methods=["GET"]),
            Route(ar + "/{request_id}/approve", e("admin.access_approved", p["POST", ar + "/{request_id}/approve"], self._approve), methods=["POST"]),
            Route(ar + "/{request_id}/reject", e("admin.access_rejected", p["POST", ar + "/{request_id}/reject"], self._reject), methods=["POST"]),
        ]  # fmt: skip


def admin_routes(app_service: AppService) -> list[Route]:
    """The admin routes of a new :class:`AdminApi` for *app_service*."""
    return AdminApi(app_service).routes()

"""THE RBAC matrix: every built-in role (and no role) x every admin operation x every way of authenticating.

The expected outcome is derived, never written by hand: an operation needs the permission of
:data:`REQUIRED` and a role allows it iff ``RbacService.role_permissions(role)`` holds that
permission (or ``"*"``). Allowed -> 2xx, refused -> 403 ``rbac.forbidden``; no credential -> 401.
The admin token is its own row (the break-glass ``admin`` role).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import argon2
import httpx
import pytest

from maaskit.app import AppService
from maaskit.gateway import create_gateway
from maaskit.registry import Registry
from maaskit.services.rbac import ALL_PERMISSIONS, BUILTIN_ROLES, covers
from maaskit.testing.app import build_test_app

PW = "a-good-passphrase-1"
ADMIN_PW = "Adm1n-very-long-pass"
CHEAP = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
ROLES = [*sorted(BUILTIN_ROLES), None]
AUTH_METHODS = ["session", "jwt", "api_key"]
_counter = itertools.count()


async def _fresh_user(app: AppService, *roles: str) -> str:
    return (await app.users.add(f"target{next(_counter)}", PW, roles=list(roles))).id


async def _service_key(app: AppService) -> str:
    return (await app.api_keys.create("svc-owner", name="target")).key.id


Setup = Callable[[AppService], Awaitable[tuple[str, Any]]]


async def _users_path(app: AppService, suffix: str = "", body: Any = None) -> tuple[str, Any]:
    return f"/admin/users/{await _fresh_user(app)}{suffix}", body


async def _pending_request(app: AppService, decision: str, body: Any) -> tuple[str, Any]:
    uid = await _fresh_user(app)
    req = await app.access_requests.request_access(uid, "matrix")
    return f"/admin/access-requests/{req.id}/{decision}", body


async def _with_role(app: AppService) -> tuple[str, Any]:
    return f"/admin/users/{await _fresh_user(app, 'read_only')}/roles/read_only", None


async def _key(app: AppService, suffix: str, body: Any = None) -> tuple[str, Any]:
    return f"/admin/keys/{await _service_key(app)}{suffix}", body


async def _static(path: str, body: Any = None) -> tuple[str, Any]:
    return path, body


#: operation -> (method, setup building a fresh target, required permission)
OPERATIONS: dict[str, tuple[str, Setup]] = {
    "list_users": ("GET", lambda app: _static("/admin/users")),
    "create_user": (
        "POST",
        lambda app: _static("/admin/users", {"username": f"new{next(_counter)}", "password": PW}),
    ),
    "get_user": ("GET", lambda app: _users_path(app)),
    "update_user": ("PATCH", lambda app: _users_path(app, "", {"display_name": "Matrix"})),
    "delete_user": ("DELETE", lambda app: _users_path(app)),
    "disable_user": ("POST", lambda app: _users_path(app, "/disable")),
    "enable_user": ("POST", lambda app: _users_path(app, "/enable")),
    "set_password": ("POST", lambda app: _users_path(app, "/password", {"password": "new-passphrase-42"})),
    "list_roles": ("GET", lambda app: _static("/admin/roles")),
    "assign_role": ("POST", lambda app: _users_path(app, "/roles", {"role": "read_only"})),
    "revoke_role": ("DELETE", _with_role),
    "read_audit": ("GET", lambda app: _static("/admin/audit")),
    "list_access_requests": ("GET", lambda app: _static("/admin/access-requests")),
    "approve_access": ("POST", lambda app: _pending_request(app, "approve", {"role": "read_only"})),
    "reject_access": ("POST", lambda app: _pending_request(app, "reject", {"reason": "no"})),
    "create_key": ("POST", lambda app: _static("/admin/keys", {"owner_id": "svc-owner", "name": "m"})),
    "list_keys": ("GET", lambda app: _static("/admin/keys")),
    "get_key": ("GET", lambda app: _key(app, "")),
    "rotate_key": ("POST", lambda app: _key(app, "/rotate", {})),
    "revoke_key": ("POST", lambda app: _key(app, "/revoke")),
    "disable_key": ("POST", lambda app: _key(app, "/disable")),
    "enable_key": ("POST", lambda app: _key(app, "/enable")),
    "key_budget": ("PUT", lambda app: _key(app, "/budget", {"budget": "5"})),
    "usage_report": ("GET", lambda app: _static("/admin/usage")),
}

#: The permission each operation requires (the contract under test, from the module docs).
REQUIRED: dict[str, str] = {
    "list_users": "users:read",
    "create_user": "users:manage",
    "get_user": "users:read",
    "update_user": "users:manage",
    "delete_user": "users:manage",
    "disable_user": "users:manage",
    "enable_user": "users:manage",
    "set_password": "users:manage",
    "list_roles": "roles:read",
    "assign_role": "roles:assign",
    "revoke_role": "roles:assign",
    "read_audit": "audit:read",
    "list_access_requests": "access_requests:read",
    "approve_access": "access_requests:review",
    "reject_access": "access_requests:review",
    "create_key": "keys:manage",
    "list_keys": "keys:read",
    "get_key": "keys:read",
    "rotate_key": "keys:manage",
    "revoke_key": "keys:manage",
    "disable_key": "keys:manage",
    "enable_key": "keys:manage",
    "key_budget": "budgets:manage",
    "usage_report": "usage:read",
}


def test_every_operation_has_a_required_permission() -> None:
    from maaskit.services.rbac import PERMISSIONS

    assert set(OPERATIONS) == set(REQUIRED)
    assert set(REQUIRED.values()) <= PERMISSIONS


@pytest.fixture
async def app() -> AsyncIterator[AppService]:
    def configure(registry: Registry) -> None:
        registry.register_value(argon2.PasswordHasher, CHEAP)

    service = build_test_app(configure=configure, upstream_url="http://127.0.0.1:9")
    async with service:
        await service.users.ensure_default_admin(ADMIN_PW)
        yield service


def _client(app: AppService) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_gateway(app_service=app), client=("198.51.100.7", 1))
    return httpx.AsyncClient(transport=transport, base_url="https://testserver")


async def _credentials(
    app: AppService, client: httpx.AsyncClient, method: str, role: str | None
) -> dict[str, str]:
    """Headers authenticating as a fresh user holding *role* (or no role) by *method*."""
    name = f"caller{next(_counter)}"
    user = await app.users.add(name, PW, roles=[role] if role else [])
    if method == "session":
        reply = await client.post("/admin/login", json={"username": name, "password": PW})
        assert reply.status_code == 200, reply.text
        return {"x-csrf-token": reply.json()["csrf_token"]}  # the cookie stays in the client's jar
    if method == "jwt":
        reply = await client.post("/admin/token", json={"username": name, "password": PW})
        assert reply.status_code == 200, reply.text
        return {"authorization": f"Bearer {reply.json()['access_token']}"}
    created = await app.api_keys.create(user.id, name="caller key")
    return {"authorization": f"Bearer {created.secret}"}


async def _run_matrix(
    app: AppService, client: httpx.AsyncClient, headers: dict[str, str], held: frozenset[str]
) -> list[str]:
    wrong: list[str] = []
    for op, (method, setup) in OPERATIONS.items():
        path, body = await setup(app)
        allowed = ALL_PERMISSIONS in held or REQUIRED[op] in held
        reply = await client.request(method, path, json=body, headers=headers)
        ok = 200 <= reply.status_code < 300 if allowed else reply.status_code == 403
        if not allowed and ok:
            ok = reply.json()["error"]["code"] == "rbac.forbidden"
        if not ok:
            wrong.append(
                f"{op}: expected {'2xx' if allowed else '403'}, got {reply.status_code} {reply.text[:160]}"
            )
    return wrong


@pytest.mark.parametrize("method", AUTH_METHODS)
@pytest.mark.parametrize("role", ROLES, ids=lambda r: r or "no_role")
async def test_rbac_matrix(app: AppService, role: str | None, method: str) -> None:
    held = await app.rbac.role_permissions(role) if role else frozenset()
    async with _client(app) as client:
        headers = await _credentials(app, client, method, role)
        wrong = await _run_matrix(app, client, headers, held)
    assert not wrong, "\n".join(wrong)


async def test_rbac_matrix_admin_token(app: AppService) -> None:
    token = app.settings.admin_token
    assert token is not None
    async with _client(app) as client:
        headers = {"authorization": f"Bearer {token.get_secret_value()}"}
        wrong = await _run_matrix(app, client, headers, frozenset({ALL_PERMISSIONS}))
    assert not wrong, "\n".join(wrong)


async def test_rbac_matrix_unauthenticated(app: AppService) -> None:
    async with _client(app) as client:
        for op, (method, setup) in OPERATIONS.items():
            path, body = await setup(app)
            reply = await client.request(method, path, json=body)
            assert reply.status_code == 401, (op, reply.text)
            assert reply.json()["error"]["code"] == "auth.missing"


#: key operations whose target key belongs to a user: the caller must also hold every permission
#: of that user (a key acts with all of its owner's permissions)
OWNED_KEY_OPERATIONS: dict[str, tuple[str, str, Any]] = {
    "create_key": ("POST", "", None),
    "rotate_key": ("POST", "/rotate", {}),
    "revoke_key": ("POST", "/revoke", None),
    "disable_key": ("POST", "/disable", None),
    "enable_key": ("POST", "/enable", None),
    "key_budget": ("PUT", "/budget", {"budget": "5"}),
}


@pytest.mark.parametrize("owner_role", ["admin", "team_admin", "member"])
@pytest.mark.parametrize("role", ROLES, ids=lambda r: r or "no_role")
async def test_key_operations_on_keys_of_users(app: AppService, role: str | None, owner_role: str) -> None:
    held = await app.rbac.role_permissions(role) if role else frozenset()
    owner_perms = await app.rbac.role_permissions(owner_role)
    wrong: list[str] = []
    async with _client(app) as client:
        headers = await _credentials(app, client, "session", role)
        for op, (method, suffix, body) in OWNED_KEY_OPERATIONS.items():
            owner = await _fresh_user(app, owner_role)
            if op == "create_key":
                path, body = "/admin/keys", {"owner_id": owner, "name": "m"}
            else:
                path = f"/admin/keys/{(await app.api_keys.create(owner, name='target')).key.id}{suffix}"
            reply = await client.request(method, path, json=body, headers=headers)
            permitted = ALL_PERMISSIONS in held or REQUIRED[op] in held
            if permitted and covers(held, owner_perms):
                ok = 200 <= reply.status_code < 300
            else:
                code = "users.forbidden_target" if permitted else "rbac.forbidden"
                ok = reply.status_code == 403 and reply.json()["error"]["code"] == code
                ok = ok and "secret" not in reply.text
            if not ok:
                wrong.append(f"{op} on a {owner_role}'s key: got {reply.status_code} {reply.text[:160]}")
    assert not wrong, "\n".join(wrong)

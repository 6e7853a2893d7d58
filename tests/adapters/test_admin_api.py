"""Admin API end to end over ASGI: cookies, CSRF, rotation, JWTs, proxies, escalation, audit, no secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import argon2
import httpx
import pytest
from structlog.testing import capture_logs

from maaskit.app import AppService
from maaskit.clock import Clock
from maaskit.errors import NotFoundError, UnavailableError
from maaskit.gateway import create_gateway
from maaskit.registry import Registry
from maaskit.services.auth import Authenticator
from maaskit.services.login_throttle import LoginThrottle, MemoryLoginThrottle
from maaskit.testing.app import build_test_app
from maaskit.testing.clock import FakeClock

pytestmark = pytest.mark.anyio

COOKIE = "__Host-maaskit_session"
ADMIN_PW = "Adm1n-very-long-pass"
PW = "a-good-passphrase-1"
CHEAP = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)


class SpyThrottle(MemoryLoginThrottle):
    """The memory throttle, remembering which client IPs it was asked about."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.ips: list[str | None] = []

    async def reserve(self, account: str, client_ip: str | None) -> None:
        self.ips.append(client_ip)
        await super().reserve(account, client_ip)


class Env:
    """A started app, its gateway and helpers."""

    def __init__(self, app: AppService, throttle: SpyThrottle) -> None:
        self.app = app
        self.gateway = create_gateway(app_service=app)
        self.throttle = throttle
        self.admin_id = ""

    def client(self, peer: tuple[str, int] = ("198.51.100.7", 5000), **kw: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.gateway, client=peer)
        return httpx.AsyncClient(transport=transport, base_url="https://testserver", **kw)

    async def login(self, client: httpx.AsyncClient, username: str, password: str) -> str:
        reply = await client.post("/admin/login", json={"username": username, "password": password})
        assert reply.status_code == 200, reply.text
        csrf: str = reply.json()["csrf_token"]
        return csrf

    async def user(self, name: str, *roles: str) -> str:
        user = await self.app.users.add(name, PW, roles=list(roles))
        return user.id


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    throttle = SpyThrottle(clock)

    def configure(registry: Registry) -> None:
        registry.register_value(argon2.PasswordHasher, CHEAP)

    app = build_test_app(
        {LoginThrottle: throttle},
        clock=clock,
        configure=configure,
        trusted_proxies=["10.0.0.0/8"],
        upstream_url="http://127.0.0.1:9",
    )
    async with app:
        e = Env(app, throttle)
        admin, _ = await app.users.ensure_default_admin(ADMIN_PW)
        e.admin_id = admin.id
        yield e


def _cookie_header(reply: httpx.Response) -> str:
    [header] = reply.headers.get_list("set-cookie")
    return header


async def test_login_sets_a_host_prefixed_strict_cookie(env: Env) -> None:
    async with env.client() as c:
        reply = await c.post("/admin/login", json={"username": "admin", "password": ADMIN_PW})
        assert reply.status_code == 200
        header = _cookie_header(reply)
        name_value, *attrs = [part.strip() for part in header.split(";")]
        assert name_value.startswith(COOKIE + "=")
        lowered = {a.split("=")[0].lower(): a for a in attrs}
        assert "secure" in lowered
        assert "httponly" in lowered
        assert lowered["samesite"] == "SameSite=Strict"
        assert lowered["path"] == "Path=/"
        assert "domain" not in lowered
        assert reply.headers["cache-control"] == "no-store"
        body = reply.json()
        assert set(body) == {"csrf_token", "user_id", "roles"}
        assert body["roles"] == ["admin"]
        session_id = name_value.split("=", 1)[1]
        assert session_id not in reply.text
        assert ADMIN_PW not in reply.text
        # the cookie authenticates
        me = await c.get("/admin/users")
        assert me.status_code == 200


async def test_wrong_password_is_401_and_audited_without_the_password(env: Env) -> None:
    async with env.client() as c:
        reply = await c.post("/admin/login", json={"username": "admin", "password": "wrong-" + ADMIN_PW})
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "users.invalid_credentials"
    assert "set-cookie" not in reply.headers
    events = await env.app.audit.query(action="users.login")
    assert events[0].outcome.value == "failure"
    assert all(ADMIN_PW not in repr(e) for e in await env.app.audit.query(limit=1000))


@pytest.mark.parametrize("token", [None, "", "wrong-token", "x" * 200])
async def test_cookie_state_change_without_a_valid_csrf_token_is_403(env: Env, token: str | None) -> None:
    async with env.client() as c:
        csrf = await env.login(c, "admin", ADMIN_PW)
        headers = {} if token is None else {"x-csrf-token": token}
        reply = await c.post("/admin/users", json={"username": "mallory", "password": PW}, headers=headers)
        assert reply.status_code == 403, reply.text
        assert reply.json()["error"]["code"] == "session.csrf_invalid"
        with pytest.raises(NotFoundError):
            await env.app.users.get_by_username("mallory")
        # reads need no CSRF token; with the right token the change goes through
        assert (await c.get("/admin/users")).status_code == 200
        ok = await c.post(
            "/admin/users", json={"username": "mallory", "password": PW}, headers={"x-csrf-token": csrf}
        )
        assert ok.status_code == 201
    denied = await env.app.audit.query(action="auth.csrf")
    assert denied
    assert denied[0].outcome.value == "denied"


async def test_csrf_token_of_another_session_is_refused(env: Env) -> None:
    await env.user("bob", "admin")
    async with env.client() as a, env.client() as b:
        await env.login(a, "admin", ADMIN_PW)
        other_csrf = await env.login(b, "bob", PW)
        reply = await a.post("/admin/users/x/disable", headers={"x-csrf-token": other_csrf})
        assert reply.status_code == 403


async def test_login_rotates_the_session(env: Env) -> None:
    async with env.client() as c:
        await env.login(c, "admin", ADMIN_PW)
        old = c.cookies[COOKIE]
        await env.login(c, "admin", ADMIN_PW)
        new = c.cookies[COOKIE]
        assert new != old
        assert (await c.get("/admin/users")).status_code == 200
    async with env.client(cookies={COOKIE: old}) as stale:
        reply = await stale.get("/admin/users")
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "session.invalid"


async def test_planted_session_id_never_becomes_authenticated(env: Env) -> None:
    _session, planted = await env.app.sessions.create("someone-else")
    async with env.client(headers={"cookie": f"{COOKIE}={planted}"}) as c:
        reply = await c.post("/admin/login", json={"username": "admin", "password": ADMIN_PW})
        issued = _cookie_header(reply).split(";")[0].split("=", 1)[1]
        assert issued != planted
    assert await env.app.sessions.get(planted) is None


async def test_logout_destroys_the_session(env: Env) -> None:
    async with env.client() as c:
        csrf = await env.login(c, "admin", ADMIN_PW)
        sid = c.cookies[COOKIE]
        assert (await c.post("/admin/logout")).status_code == 403  # CSRF applies to logout too
        reply = await c.post("/admin/logout", headers={"x-csrf-token": csrf})
        assert reply.status_code == 200
        assert "Max-Age=0" in _cookie_header(reply)
    assert await env.app.sessions.get(sid) is None
    async with env.client(cookies={COOKIE: sid}) as again:
        assert (await again.get("/admin/users")).status_code == 401


async def test_bearer_jwt_path_refresh_and_logout(env: Env) -> None:
    async with env.client() as c:
        reply = await c.post("/admin/token", json={"username": "admin", "password": ADMIN_PW})
        assert reply.status_code == 200
        assert reply.headers["cache-control"] == "no-store"
        pair = reply.json()
        assert pair["token_type"] == "Bearer"
        assert pair["expires_in"] > 0
        bearer = {"authorization": f"Bearer {pair['access_token']}"}
        # no CSRF needed with a bearer token
        created = await c.post("/admin/users", json={"username": "carol", "password": PW}, headers=bearer)
        assert created.status_code == 201
        assert PW not in created.text
        # refresh rotates; the old refresh token is spent and reuse revokes the family
        fresh = (await c.post("/admin/token/refresh", json={"refresh_token": pair["refresh_token"]})).json()
        assert fresh["refresh_token"] != pair["refresh_token"]
        reuse = await c.post("/admin/token/refresh", json={"refresh_token": pair["refresh_token"]})
        assert reuse.status_code == 401
        assert reuse.json()["error"]["code"] == "tokens.refresh_reused"
        dead = await c.post("/admin/token/refresh", json={"refresh_token": fresh["refresh_token"]})
        assert dead.status_code == 401
        # an access token cannot be used as a refresh token, nor a refresh token as a bearer
        wrong = await c.post("/admin/token/refresh", json={"refresh_token": fresh["access_token"]})
        assert wrong.status_code == 401
        as_bearer = await c.get("/admin/users", headers={"authorization": f"Bearer {fresh['refresh_token']}"})
        assert as_bearer.status_code == 401
        # logout revokes the access token
        bearer2 = {"authorization": f"Bearer {fresh['access_token']}"}
        assert (await c.post("/admin/logout", headers=bearer2)).status_code == 200
        assert (await c.get("/admin/users", headers=bearer2)).status_code == 401


async def test_jwt_of_a_disabled_user_or_from_before_a_password_change_is_refused(env: Env) -> None:
    bob = await env.user("bob", "read_only")
    async with env.client() as c:
        pair = (await c.post("/admin/token", json={"username": "bob", "password": PW})).json()
        bearer = {"authorization": f"Bearer {pair['access_token']}"}
        assert (
            await c.get("/admin/roles", headers={"authorization": bearer["authorization"]})
        ).status_code == 403
        assert (await c.get("/admin/users/" + bob, headers=bearer)).status_code == 403
        env.app.clock.advance(2)  # type: ignore[attr-defined]
        await env.app.users.set_password(bob, "another-passphrase-2")
        reply = await c.get("/admin/users", headers=bearer)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "auth.invalid_credential"
        pair = (
            await c.post("/admin/token", json={"username": "bob", "password": "another-passphrase-2"})
        ).json()
        bearer = {"authorization": f"Bearer {pair['access_token']}"}
        assert (await c.get("/admin/users", headers=bearer)).status_code == 403  # read_only: no users:read
        await env.app.users.disable(bob)
        assert (await c.get("/admin/users", headers=bearer)).status_code == 401
        refresh = await c.post("/admin/token/refresh", json={"refresh_token": pair["refresh_token"]})
        assert refresh.status_code == 401


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(env: Env) -> None:
    async with env.client(peer=("203.0.113.5", 123)) as c:
        for i in range(21):
            reply = await c.post(
                "/admin/login",
                json={"username": f"nobody{i}", "password": "wrong-password-x"},
                headers={"x-forwarded-for": f"192.0.2.{i}"},
            )
            assert reply.status_code == 401
        assert set(env.throttle.ips) == {"203.0.113.5"}
        # the peer's IP budget (20 free failures) is spent: rotating X-Forwarded-For does not help
        blocked = await c.post(
            "/admin/login",
            json={"username": "admin", "password": ADMIN_PW},
            headers={"x-forwarded-for": "192.0.2.200"},
        )
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) >= 1


async def test_forwarded_for_from_a_trusted_proxy_is_honoured(env: Env) -> None:
    async with env.client(peer=("10.1.2.3", 443)) as c:
        for i in range(25):
            reply = await c.post(
                "/admin/login",
                json={"username": f"nobody{i}", "password": "wrong-password-x"},
                headers={"x-forwarded-for": f"192.0.2.{i}, 10.9.9.9"},
            )
            assert reply.status_code == 401  # each client IP has its own budget
        assert env.throttle.ips == [f"192.0.2.{i}" for i in range(25)]
        ok = await c.post(
            "/admin/login",
            json={"username": "admin", "password": ADMIN_PW},
            headers={"x-forwarded-for": "garbage, 192.0.2.99"},
        )
        assert ok.status_code == 200
        assert env.throttle.ips[-1] == "192.0.2.99"


async def test_a_user_cannot_grant_a_role_they_do_not_hold(env: Env) -> None:
    await env.user("tina", "team_admin")
    victim = await env.user("victim")
    async with env.client() as c:
        csrf = await env.login(c, "tina", PW)
        h = {"x-csrf-token": csrf}
        for role in ("admin",):
            reply = await c.post(f"/admin/users/{victim}/roles", json={"role": role}, headers=h)
            assert reply.status_code == 403
            assert reply.json()["error"]["code"] == "rbac.escalation"
        # not to herself either
        me = (await env.app.users.get_by_username("tina")).id
        assert (
            await c.post(f"/admin/users/{me}/roles", json={"role": "admin"}, headers=h)
        ).status_code == 403
        # nor create a user with it
        made = await c.post(
            "/admin/users", json={"username": "sneaky", "password": PW, "roles": ["admin"]}, headers=h
        )
        assert made.status_code == 403
        # a role she holds is fine
        ok = await c.post(f"/admin/users/{victim}/roles", json={"role": "member"}, headers=h)
        assert ok.status_code == 201
    assert not await env.app.rbac.is_admin(victim)
    assert not await env.app.rbac.is_admin(me)
    assert {a.role for a in await env.app.rbac.user_roles(victim)} == {"member"}


async def test_member_key_cannot_create_keys_for_others_but_for_itself(env: Env) -> None:
    bob = await env.user("bob", "member")
    created = await env.app.api_keys.create(bob, name="bob's key")
    async with env.client(headers={"authorization": f"Bearer {created.secret}"}) as c:
        other = await c.post("/admin/keys", json={"owner_id": env.admin_id, "name": "k"})
        assert other.status_code == 403
        own = await c.post("/admin/keys", json={"owner_id": bob, "name": "k"})
        assert own.status_code == 201
        other_key = await env.app.api_keys.create("svc-owner", name="svc")
        assert (await c.post(f"/admin/keys/{other_key.key.id}/revoke")).status_code == 403
        assert (await c.post(f"/admin/keys/{own.json()['id']}/revoke")).status_code == 200
        assert (await c.post("/admin/keys/key_does_not_exist/revoke")).status_code == 404
    service_key = await env.app.api_keys.create("svc-owner", name="svc")
    async with env.client(headers={"authorization": f"Bearer {service_key.secret}"}) as c:
        reply = await c.get("/admin/keys")
        assert reply.status_code == 403  # a key not owned by a user holds only models:use
        assert reply.json()["error"]["code"] == "rbac.forbidden"


async def test_access_request_workflow_and_no_self_approval(env: Env) -> None:
    newbie = await env.user("newbie")
    reviewer = await env.user("reviewer", "admin")
    async with env.client() as c:
        csrf = await env.login(c, "newbie", PW)
        h = {"x-csrf-token": csrf}
        made = await c.post("/admin/access-requests", json={"reason": "I run evals"}, headers=h)
        assert made.status_code == 201
        req_id = made.json()["id"]
        assert (await c.get("/admin/access-requests")).status_code == 403
        assert (
            await c.post(f"/admin/access-requests/{req_id}/approve", json={"role": "member"}, headers=h)
        ).status_code == 403
    # an admin-token request to approve a request of the protected admin's own cannot exist; reviewers
    # cannot decide their own request either
    await env.app.rbac.revoke_role(env.admin_id, reviewer, "admin")
    own = await env.app.access_requests.request_access(reviewer, "please")
    await env.app.rbac.grant_role_as_system(reviewer, "admin")
    async with env.client() as c:
        csrf = await env.login(c, "reviewer", PW)
        h = {"x-csrf-token": csrf}
        self_ok = await c.post(f"/admin/access-requests/{own.id}/approve", json={"role": "admin"}, headers=h)
        assert self_ok.status_code == 403
        assert self_ok.json()["error"]["code"] == "access_requests.self_decision"
        listed = await c.get("/admin/access-requests", params={"status": "pending"})
        assert {r["id"] for r in listed.json()["data"]} == {req_id, own.id}
        ok = await c.post(f"/admin/access-requests/{req_id}/approve", json={"role": "member"}, headers=h)
        assert ok.status_code == 200
        assert ok.json()["status"] == "approved"
    assert {a.role for a in await env.app.rbac.user_roles(newbie)} == {"member"}


async def test_every_admin_action_is_audited(env: Env) -> None:
    token = env.app.settings.admin_token
    assert token is not None
    async with env.client(headers={"authorization": f"Bearer {token.get_secret_value()}"}) as c:
        uid = (await c.post("/admin/users", json={"username": "dora", "password": PW})).json()["id"]
        calls = [
            ("GET", "/admin/users", None, "admin.users_listed"),
            ("GET", f"/admin/users/{uid}", None, "admin.user_read"),
            ("PATCH", f"/admin/users/{uid}", {"display_name": "Dora"}, "admin.user_updated"),
            ("POST", f"/admin/users/{uid}/disable", None, "admin.user_disabled"),
            ("POST", f"/admin/users/{uid}/enable", None, "admin.user_enabled"),
            ("POST", f"/admin/users/{uid}/password", {"password": "new-passphrase-9"}, "admin.password_set"),
            ("GET", "/admin/roles", None, "admin.roles_listed"),
            ("POST", f"/admin/users/{uid}/roles", {"role": "member"}, "admin.role_assigned"),
            ("DELETE", f"/admin/users/{uid}/roles/member", None, "admin.role_revoked"),
            ("GET", "/admin/audit", None, "admin.audit_read"),
            ("GET", "/admin/access-requests", None, "admin.access_requests_listed"),
            ("POST", "/admin/keys", {"owner_id": uid, "name": "k"}, "admin.gateway"),
            ("GET", "/admin/usage", None, "admin.gateway"),
            ("DELETE", f"/admin/users/{uid}", None, "admin.user_deleted"),
        ]
        for method, path, body, action in calls:
            reply = await c.request(method, path, json=body)
            assert reply.status_code < 300, (path, reply.text)
            [latest] = await env.app.audit.query(action=action, limit=1)
            assert latest.actor == "admin_token"
            assert latest.outcome.value == "success"
            assert latest.details["auth"] == "admin_token"
        # failures are audited too
        missing = await c.post("/admin/users/usr_missing/disable")
        assert missing.status_code == 404
        [failed] = await env.app.audit.query(action="admin.user_disabled", limit=1)
        assert failed.outcome.value == "failure"
        assert failed.target == "usr_missing"
        # the audit endpoint filters
        by_target = (await c.get("/admin/audit", params={"target": uid})).json()["data"]
        assert by_target
        assert all(e["target"] == uid for e in by_target)
        bad = await c.get("/admin/audit", params={"since": "yesterday"})
        assert bad.status_code == 400


async def test_passwords_and_tokens_never_leak(env: Env) -> None:
    secret_pw = "Zebra-Canary-Passphrase-77"
    with capture_logs() as logs:
        async with env.client() as c:
            csrf = await env.login(c, "admin", ADMIN_PW)
            h = {"x-csrf-token": csrf}
            sid = c.cookies[COOKIE]
            replies = [
                await c.post("/admin/users", json={"username": "eve", "password": secret_pw}, headers=h),
                await c.post("/admin/users", json={"username": "eve", "password": secret_pw}, headers=h),
                await c.post("/admin/users", json={"username": "weak", "password": "password"}, headers=h),
                await c.post("/admin/login", json={"username": "eve", "password": secret_pw + "x"}),
                await c.post("/admin/token", json={"username": "eve", "password": secret_pw}),
            ]
            uid = replies[0].json()["id"]
            replies.append(
                await c.post(f"/admin/users/{uid}/password", json={"password": secret_pw + "2"}, headers=h)
            )
            replies.append(await c.get(f"/admin/users/{uid}"))
            replies.append(await c.get("/admin/audit", params={"limit": "1000"}))
    pair = replies[4].json()
    secrets_ = [secret_pw, ADMIN_PW, sid, csrf]
    for i, reply in enumerate(replies):
        for s in secrets_:
            if i == 0 and s == csrf:
                continue
            assert s not in reply.text, (i, reply.text[:200])
    dump = repr(logs) + repr(await env.app.audit.query(limit=1000))
    for s in [*secrets_, pair["access_token"], pair["refresh_token"], secret_pw + "2"]:
        assert s not in dump
    assert logs, "the log capture saw nothing"


async def test_unauthenticated_and_malformed_requests(env: Env) -> None:
    async with env.client() as c:
        for method, path in [("GET", "/admin/users"), ("POST", "/admin/logout"), ("GET", "/admin/keys")]:
            reply = await c.request(method, path)
            assert reply.status_code == 401
            assert reply.headers["www-authenticate"] == "Bearer"
        bad = await c.post("/admin/login", content=b"{not json")
        assert bad.status_code == 400
        missing = await c.post("/admin/login", json={"username": "admin"})
        assert missing.status_code == 400
        garbage = await c.get("/admin/users", headers={"authorization": "Bearer a.b.c"})
        assert garbage.status_code == 401
        nothing = await c.get("/admin/users", headers={"authorization": "Bearer plain-words"})
        assert nothing.json()["error"]["code"] == "auth.invalid_credential"


async def test_keys_manage_cannot_reach_keys_of_a_more_privileged_user(env: Env) -> None:
    tina = await env.user("tina", "team_admin")  # keys:manage, budgets:manage, but not "*"
    bob = await env.user("bob", "member")
    admins_key = await env.app.api_keys.create(env.admin_id, name="admin's own")
    async with env.client() as c:
        h = {"x-csrf-token": await env.login(c, "tina", PW)}
        made = await c.post("/admin/keys", json={"owner_id": env.admin_id, "name": "x"}, headers=h)
        assert made.status_code == 403, made.text
        assert made.json()["error"]["code"] == "users.forbidden_target"
        assert "secret" not in made.text
        path = f"/admin/keys/{admins_key.key.id}"
        for method, suffix, body in [
            ("POST", "/rotate", {"grace_seconds": 0}),
            ("POST", "/revoke", None),
            ("POST", "/disable", None),
            ("POST", "/enable", None),
            ("PUT", "/budget", {"budget": "0"}),
        ]:
            reply = await c.request(method, path + suffix, json=body, headers=h)
            assert reply.status_code == 403, (suffix, reply.text)
            assert reply.json()["error"]["code"] == "users.forbidden_target"
            assert "secret" not in reply.text
        # reading shows no secret and stays allowed
        assert (await c.get(path)).status_code == 200
        # keys of users she covers, and of service accounts, as before
        mine = await c.post("/admin/keys", json={"owner_id": bob, "name": "b"}, headers=h)
        assert mine.status_code == 201
        svc = await c.post("/admin/keys", json={"owner_id": "svc-owner", "name": "s"}, headers=h)
        assert svc.status_code == 201
        rotated = await c.post(f"/admin/keys/{mine.json()['id']}/rotate", json={}, headers=h)
        assert rotated.status_code == 200
    key = await env.app.api_keys.get(admins_key.key.id)
    assert (key.rotation_counter, key.enabled, key.revoked_at, key.budget_micros) == (0, True, None, None)
    await env.app.api_keys.validate(admins_key.secret)
    assert [k.id for k in await env.app.api_keys.list(owner_id=env.admin_id)] == [admins_key.key.id]
    assert not await env.app.rbac.is_admin(tina)
    audited = await env.app.audit.query(action="admin.gateway", target=admins_key.key.id)
    assert sorted(
        (e.details["route"].split()[0], e.outcome.value, e.details.get("reason")) for e in audited
    ) == [
        ("GET", "success", None),
        *[("POST", "denied", "users.forbidden_target")] * 4,
        ("PUT", "denied", "users.forbidden_target"),
    ]
    # the admin token (break glass) still manages every key
    token = env.app.settings.admin_token
    assert token is not None
    async with env.client(headers={"authorization": f"Bearer {token.get_secret_value()}"}) as c:
        assert (await c.post(f"/admin/keys/{admins_key.key.id}/disable")).status_code == 200


async def test_key_routes_audit_the_outcome_after_the_action(env: Env) -> None:
    bob = await env.user("bob", "member")
    token = env.app.settings.admin_token
    assert token is not None
    async with env.client(headers={"authorization": f"Bearer {token.get_secret_value()}"}) as c:
        made = await c.post("/admin/keys", json={"owner_id": bob, "name": "k"})
        assert made.status_code == 201
        key_id, secret = made.json()["id"], made.json()["secret"]
        rotated = await c.post(f"/admin/keys/{key_id}/rotate", json={"grace_seconds": 0})
        assert rotated.status_code == 200
        failures = [
            await c.post("/admin/keys/key_nope/revoke"),
            await c.post("/admin/keys", json={"owner_id": bob}),  # no name
            await c.put("/admin/keys/key_nope/budget", json={"budget": "1"}),
            await c.post(f"/admin/keys/{key_id}/rotate", json={"grace_seconds": "soon"}),
        ]
        assert [r.status_code for r in failures] == [404, 400, 404, 400]
        assert (await c.get("/admin/usage")).status_code == 200
    events = list(reversed(await env.app.audit.query(action="admin.gateway", limit=100)))
    assert [(e.target, e.outcome.value, e.details.get("reason")) for e in events] == [
        (key_id, "success", None),  # the created key's id
        (key_id, "success", None),
        ("key_nope", "failure", "api_key.not_found"),
        ("POST /admin/keys", "failure", "http.invalid_request"),
        ("key_nope", "failure", "api_key.not_found"),
        (key_id, "failure", "http.invalid_request"),
        ("GET /admin/usage", "success", None),
    ]
    assert events[0].details["route"] == "POST /admin/keys"
    assert events[0].details["permission"] == "keys:manage"
    dump = repr(await env.app.audit.query(limit=1000))
    for s in (secret, rotated.json()["secret"], token.get_secret_value()):
        assert s not in dump


async def test_deleting_a_user_whose_keys_cannot_be_revoked_keeps_the_user(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    carol = await env.user("carol", "read_only")
    key = await env.app.api_keys.create(carol, name="k")

    async def store_down(key_id: str) -> None:
        raise UnavailableError("storage.unavailable")

    token = env.app.settings.admin_token
    assert token is not None
    async with env.client(headers={"authorization": f"Bearer {token.get_secret_value()}"}) as c:
        with monkeypatch.context() as m:
            m.setattr(env.app.api_keys, "revoke", store_down)
            failed = await c.delete(f"/admin/users/{carol}")
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "users.revocation_incomplete"
        # the account is still there: its key keeps the owner's (read_only) permissions, never the
        # "owner is not a user" fallback, and the DELETE can be retried
        assert (await c.get(f"/admin/users/{carol}")).status_code == 200
        auth = await env.app.aget(Authenticator)
        env.app.clock.advance(6)  # type: ignore[attr-defined]
        principal = await auth.principal_for_key(await env.app.api_keys.validate(key.secret))
        assert principal.user_id == carol
        assert not principal.allows("models:use")
        assert (await c.delete(f"/admin/users/{carol}")).status_code == 204
    assert (await env.app.api_keys.get(key.key.id)).revoked_at is not None

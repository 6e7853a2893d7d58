"""DefaultAuthenticator: credential kinds, key permissions capped by the owner, require, client_ip."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import argon2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.admin_api import client_ip
from maaskit.app import AppService
from maaskit.errors import ForbiddenError, UnauthenticatedError
from maaskit.registry import Registry
from maaskit.services.auth import ADMIN_TOKEN_SUBJECT, Authenticator, Principal
from maaskit.services.rbac import DefaultRbacService
from maaskit.storage.ports.rbac import RbacStore
from maaskit.storage.ports.users import UserStore
from maaskit.testing.app import build_test_app

PW = "a-good-passphrase-1"
CHEAP = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)


@pytest.fixture
async def app() -> AsyncIterator[AppService]:
    def configure(registry: Registry) -> None:
        registry.register_value(argon2.PasswordHasher, CHEAP)

    service = build_test_app(configure=configure)
    async with service:
        yield service


async def _auth(app: AppService) -> Authenticator:
    return await app.aget(Authenticator)


async def test_admin_token_is_the_admin_role(app: AppService) -> None:
    auth = await _auth(app)
    token = app.settings.admin_token
    assert token is not None
    p = await auth.authenticate_bearer(token.get_secret_value())
    assert (p.kind, p.subject, p.user_id, p.roles) == ("admin_token", ADMIN_TOKEN_SUBJECT, None, {"admin"})
    assert p.allows("users:manage")
    assert p.allows("anything:else")
    for wrong in (token.get_secret_value()[:-1], token.get_secret_value() + "x", "x"):
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate_bearer(wrong)


async def test_key_never_grants_more_than_its_owner(app: AppService) -> None:
    auth = await _auth(app)
    bob = await app.users.add("bob", PW, roles=["read_only"])
    key = await app.api_keys.create(bob.id, name="k")
    p = await auth.authenticate_bearer(key.secret)
    assert (p.kind, p.user_id, p.key_id) == ("api_key", bob.id, key.key.id)
    assert p.permissions == await app.rbac.role_permissions("read_only")
    assert not p.allows("models:use")  # read_only does not use models; neither does its key
    with pytest.raises(ForbiddenError) as err:
        await auth.require(p, "models:use")
    assert err.value.code == "rbac.forbidden"
    denied = await app.audit.query(action="auth.forbidden")
    assert denied[0].actor == bob.id
    assert denied[0].outcome.value == "denied"


async def test_key_of_a_non_user_owner_holds_only_models_use(app: AppService) -> None:
    auth = await _auth(app)
    key = await app.api_keys.create("service-account-7", name="k")
    p = await auth.authenticate_bearer(key.secret)
    assert p.user_id is None
    assert p.subject == "service-account-7"
    assert p.permissions == frozenset({"models:use"})
    await auth.require(p, "models:use")
    with pytest.raises(ForbiddenError):
        await auth.require(p, "keys:read")
    with pytest.raises(ForbiddenError):
        await auth.acting_user(p)


async def test_key_of_a_disabled_owner_is_refused(app: AppService) -> None:
    auth = await _auth(app)
    bob = await app.users.add("bob", PW, roles=["member"])
    key = await app.api_keys.create(bob.id, name="k")
    principal = await auth.principal_for_key(await app.api_keys.validate(key.secret))
    assert principal.allows("models:use")
    await app.users.disable(bob.id)  # revokes the key too; the principal check holds on its own
    auth.invalidate(bob.id)
    with pytest.raises(UnauthenticatedError):
        await auth.principal_for_key(await app.api_keys.get(key.key.id))


async def test_jwt_uses_current_permissions_not_claims(app: AppService) -> None:
    auth = await _auth(app)
    bob = await app.users.add("bob", PW, roles=["member"])
    forged_roles = app.tokens.issue_access(bob.id, roles=["admin"])
    p = await auth.authenticate_bearer(forged_roles.token)
    assert p.kind == "jwt"
    assert p.roles == {"member"}
    assert not p.allows("users:manage")
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate_bearer(app.tokens.issue_access("usr_nobody").token)


async def test_team_scoped_require(app: AppService) -> None:
    auth = await _auth(app)
    bob = await app.users.add("bob", PW)
    await app.rbac.grant_role_as_system(bob.id, "team_admin", team_id="team-a")
    _s, sid = await app.sessions.create(bob.id)
    p = await auth.authenticate_session(sid)
    assert not p.allows("teams:manage")
    await auth.require(p, "teams:manage", team_id="team-a")
    with pytest.raises(ForbiddenError):
        await auth.require(p, "teams:manage", team_id="team-b")
    with pytest.raises(ForbiddenError):
        await auth.require(p, "teams:manage")


async def test_require_covers_the_owner_of_a_key(app: AppService) -> None:
    auth = await _auth(app)
    lead = await app.users.add("lead", PW, roles=["team_admin"])
    root = await app.users.add("root", PW, roles=["admin"])
    dormant = await app.users.add("dormant", PW, roles=["admin"])
    await app.users.disable(dormant.id)
    member = await app.users.add("member", PW, roles=["member"])
    _s, sid = await app.sessions.create(lead.id)
    p = await auth.authenticate_session(sid)
    assert p.allows("keys:manage")
    for owner in (root.id, dormant.id):  # a key acts with all of its owner's permissions
        with pytest.raises(ForbiddenError) as err:
            await auth.require_covers(p, owner)
        assert err.value.code == "users.forbidden_target"
    denied = await app.audit.query(action="auth.forbidden")
    assert [(e.target, e.details["reason"]) for e in denied[:2]] == [
        (dormant.id, "users.forbidden_target"),
        (root.id, "users.forbidden_target"),
    ]
    await auth.require_covers(p, member.id)  # everything a member holds, the lead holds
    await auth.require_covers(p, lead.id)  # oneself
    await auth.require_covers(p, "service-account-7")  # not a user: its keys hold only models:use
    token = app.settings.admin_token
    assert token is not None
    await auth.require_covers(await auth.authenticate_bearer(token.get_secret_value()), root.id)


async def test_login_audits_and_never_stores_the_password(app: AppService) -> None:
    auth = await _auth(app)
    await app.users.add("bob", PW)
    principal, sid, csrf = await auth.login("bob", PW, client_ip="192.0.2.1")
    assert principal.kind == "session"
    app.sessions.verify_csrf(sid, csrf)
    again = await auth.login("bob", PW, previous_session_id=sid)
    assert again.session_id not in repr(again)
    assert again.csrf_token not in repr(again)
    assert await app.sessions.get(sid) is None  # the previous session was destroyed
    with pytest.raises(UnauthenticatedError):
        await auth.login("bob", PW + "x")
    events = await app.audit.query(limit=1000)
    assert {"auth.login", "users.login"} <= {e.action for e in events}
    assert all(PW not in repr(e) for e in events)


def test_principal_allows_is_a_set_lookup() -> None:
    p = Principal(kind="session", subject="u", user_id="u", permissions=frozenset({"keys:read"}))
    assert p.allows("keys:read")
    assert not p.allows("keys:manage")
    assert p.is_user


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def test_client_ip_rules() -> None:
    assert client_ip("203.0.113.5", "192.0.2.1", TRUSTED) == "203.0.113.5"
    assert client_ip("10.0.0.1", "192.0.2.1", TRUSTED) == "192.0.2.1"
    assert client_ip("10.0.0.1", "192.0.2.1, 10.0.0.2", TRUSTED) == "192.0.2.1"
    assert client_ip("10.0.0.1", "192.0.2.9, 192.0.2.1", TRUSTED) == "192.0.2.1"
    assert client_ip("10.0.0.1", "nonsense", TRUSTED) == "10.0.0.1"
    assert client_ip("10.0.0.1", "10.0.0.3", TRUSTED) == "10.0.0.3"
    assert client_ip("10.0.0.1", None, TRUSTED) == "10.0.0.1"
    assert client_ip(None, "192.0.2.1", TRUSTED) is None


@given(st.ip_addresses(v=4).map(str), st.text(max_size=80))
def test_untrusted_peer_is_never_replaced(peer: str, header: str) -> None:
    if ipaddress.ip_address(peer) in TRUSTED[0]:
        return
    assert client_ip(peer, header, TRUSTED) == peer


async def test_losing_models_use_on_another_replica_takes_both_cache_ttls() -> None:
    """The bound docs/users-and-rbac.md states: RBAC ``cache_ttl`` + admission ``permission_ttl``."""

    def configure(registry: Registry) -> None:
        registry.register_value(argon2.PasswordHasher, CHEAP)

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    async with build_test_app(configure=configure, model_prices={"m": {"input": "1", "output": "1"}}) as app:
        clock = app.clock
        dan = await app.users.add("dan", PW, roles=["member"])
        key = await app.api_keys.create(dan.id, name="k")

        async def admitted() -> bool:
            try:
                admission = await app.admission.admit(key.secret, "m", body)
            except ForbiddenError:
                return False
            await app.admission.release(admission)
            return True

        assert await admitted()  # t=0: admission trusts this answer until t=5
        clock.advance(5.5)  # type: ignore[attr-defined]
        await app.rbac.permissions_for(dan.id)  # t=5.5: this replica caches dan's roles until 10.5
        other_replica = DefaultRbacService(
            await app.aget(RbacStore), await app.aget(UserStore), app.audit, clock
        )
        await other_replica.remove_all_roles(dan.id)  # dan loses models:use elsewhere
        outcomes = []
        for step in (4.9, 4.9, 0.3):  # 4.9 s, 9.8 s and 10.1 s after the change
            clock.advance(step)  # type: ignore[attr-defined]
            outcomes.append(await admitted())
        assert outcomes == [True, True, False]

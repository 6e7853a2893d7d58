"""UserService: accounts, password policy, login, throttling, rehash, protected admin, revocation."""

from __future__ import annotations

import asyncio
import unicodedata

import argon2
import attrs
import pytest

from maaskit.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)
from maaskit.services.audit import AuditOutcome, DefaultAuditLog
from maaskit.services.rbac import ADMIN_ROLE, MEMBER_ROLE, TEAM_ADMIN_ROLE, DefaultRbacService
from maaskit.services.users import (
    COMMON_PASSWORDS,
    UNSET,
    CredentialRevoker,
    DefaultUserService,
    UserService,
    validate_password,
)
from maaskit.storage.memory.audit import MemoryAuditStore
from maaskit.storage.memory.rbac import MemoryRbacStore
from maaskit.storage.memory.users import MemoryUserStore
from maaskit.testing.clock import FakeClock

PW = "correct horse battery"
CHEAP = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)


class CountingHasher(argon2.PasswordHasher):
    """The cheap profile, counting verify() calls (to show equal work on every failure path)."""

    def __init__(self) -> None:
        p = argon2.profiles.CHEAPEST
        super().__init__(p.time_cost, p.memory_cost, p.parallelism, p.hash_len, p.salt_len)
        self.verifies = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifies += 1
        return super().verify(hash, password)


@attrs.define
class RecordingRevoker:
    calls: list[str] = attrs.Factory(list)
    fail: bool = False

    async def revoke_user_credentials(self, user_id: str) -> None:
        self.calls.append(user_id)
        if self.fail:
            raise RuntimeError("store down")


@attrs.define
class Stack:
    users: DefaultUserService
    rbac: DefaultRbacService
    audit: DefaultAuditLog
    store: MemoryUserStore
    clock: FakeClock
    revoker: RecordingRevoker

    def service(self, hasher: argon2.PasswordHasher) -> DefaultUserService:
        return DefaultUserService(self.store, self.rbac, self.audit, self.clock, hasher=hasher)


def make_stack(clock: FakeClock, hasher: argon2.PasswordHasher = CHEAP) -> Stack:
    store = MemoryUserStore()
    audit = DefaultAuditLog(MemoryAuditStore(), clock)
    rbac = DefaultRbacService(MemoryRbacStore(), store, audit, clock)
    revoker = RecordingRevoker()
    users = DefaultUserService(store, rbac, audit, clock, hasher=hasher, revokers=[revoker])
    return Stack(users, rbac, audit, store, clock, revoker)


@pytest.fixture
def stack(clock: FakeClock) -> Stack:
    return make_stack(clock)


def test_protocols(stack: Stack) -> None:
    assert isinstance(stack.users, UserService)
    assert isinstance(stack.revoker, CredentialRevoker)


def test_default_hasher_is_argon2_default_profile(stack: Stack) -> None:
    svc = DefaultUserService(stack.store, stack.rbac, stack.audit, stack.clock)
    default = argon2.PasswordHasher()
    assert "t=3" in repr(svc)
    assert f"m={default.memory_cost}" in repr(svc)
    assert "p=4" in repr(svc)
    assert default.type is argon2.Type.ID


def test_argon2i_is_refused(stack: Stack) -> None:
    with pytest.raises(ValidationError):
        DefaultUserService(
            stack.store, stack.rbac, stack.audit, hasher=argon2.PasswordHasher(type=argon2.Type.I)
        )


async def test_login_with_the_default_profile(clock: FakeClock) -> None:
    stack = make_stack(clock, hasher=argon2.PasswordHasher())
    user = await stack.users.add("dana", PW)
    record = await stack.store.get(user.id)
    assert record is not None
    assert record.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert (await stack.users.authenticate("dana", PW)).id == user.id


async def test_add_get_list_update(stack: Stack) -> None:
    bob = await stack.users.add(
        "Bob", PW, email="bob@example.com", display_name="Bob B.", roles=[MEMBER_ROLE]
    )
    assert (await stack.users.get(bob.id)).username == "Bob"
    assert (await stack.users.get_by_username("bOB")).id == bob.id
    assert await stack.rbac.check_permission(bob.id, "keys:create")
    with pytest.raises(ConflictError) as info:
        await stack.users.add("BOB", PW)
    assert info.value.code == "users.username_taken"
    await stack.users.add("alice", PW)
    assert [u.username for u in await stack.users.list()] == ["alice", "Bob"]
    assert [u.username for u in await stack.users.list(after="alice")] == ["Bob"]
    stack.clock.advance(60)
    updated = await stack.users.update(bob.id, email=None, display_name=UNSET)
    assert updated.email is None
    assert updated.display_name == "Bob B."
    assert updated.updated_at > bob.updated_at
    with pytest.raises(NotFoundError):
        await stack.users.get("usr_missing")
    with pytest.raises(NotFoundError):
        await stack.users.get_by_username("x")
    with pytest.raises(ValidationError):
        await stack.users.list(limit=0)
    assert "password_hash" not in repr(bob)
    assert "$argon2" not in repr(await stack.store.get(bob.id))


@pytest.mark.parametrize(
    ("username", "password", "code"),
    [
        ("ab", PW, "users.invalid_username"),
        ("-bob", PW, "users.invalid_username"),
        ("bob smith", PW, "users.invalid_username"),
        ("b" * 65, PW, "users.invalid_username"),
        ("bob", "shrt123", "users.invalid_password"),
        ("bob", "x" * 129, "users.invalid_password"),
        ("bob", "Password123", "users.password_too_common"),
        ("bobbybobby", "BobbyBobby", "users.invalid_password"),
        ("bob", "\ud800" * 10, "users.invalid_password"),
        ("bob\n", PW, "users.invalid_username"),  # "$" would match before a trailing newline
        ("bob\r\n", PW, "users.invalid_username"),
    ],
)
async def test_input_validation(stack: Stack, username: str, password: str, code: str) -> None:
    with pytest.raises(ValidationError) as info:
        await stack.users.add(username, password)
    assert info.value.code == code
    assert password not in str(info.value)
    assert password not in repr(info.value)
    assert await stack.store.list() == []


def test_password_bytes_limit() -> None:
    validate_password("a" * 128)
    assert validate_password("€" * 128) == "€" * 128  # 128 characters, 384 bytes
    with pytest.raises(ValidationError):
        validate_password("é" * 129)  # over 128 characters
    assert len(COMMON_PASSWORDS) >= 100
    assert all(len(p) >= 8 for p in COMMON_PASSWORDS)


async def test_bad_email_and_unknown_role_write_nothing(stack: Stack) -> None:
    with pytest.raises(ValidationError):
        await stack.users.add("bob", PW, email="not-an-email")
    with pytest.raises(NotFoundError):
        await stack.users.add("bob", PW, roles=["nope"])
    assert await stack.store.list() == []


async def test_authenticate_same_error_and_same_work(clock: FakeClock) -> None:
    hasher = CountingHasher()
    stack = make_stack(clock, hasher=hasher)
    bob = await stack.users.add("bob", PW)
    carol = await stack.users.add("carol", PW)
    await stack.users.disable(carol.id)
    errors = []
    for username, password in [("nobody", PW), ("bob", "wrong password!"), ("carol", PW)]:
        before = hasher.verifies
        with pytest.raises(UnauthenticatedError) as info:
            await stack.users.authenticate(username, password)
        assert hasher.verifies == before + 1  # one argon2 verification on every path
        errors.append((info.value.code, str(info.value), info.value.params))
    assert len(set(map(repr, errors))) == 1
    assert errors[0][0] == "users.invalid_credentials"
    assert (await stack.users.authenticate("BOB", PW)).id == bob.id
    failures = await stack.audit.query(action="users.login")
    assert [e.outcome for e in failures] == [AuditOutcome.SUCCESS] + [AuditOutcome.FAILURE] * 3


async def test_oversized_and_odd_inputs_fail_cleanly(stack: Stack) -> None:
    await stack.users.add("bob", PW)
    for username, password in [("bob", "x" * 5000), ("bob", "\ud800abc"), ("b" * 500, PW), ("bob", None)]:
        with pytest.raises(UnauthenticatedError):
            await stack.users.authenticate(username, password)  # type: ignore[arg-type]


async def test_throttling_grows_and_resets(stack: Stack) -> None:
    await stack.users.add("bob", PW)
    for _ in range(5):  # free failures
        with pytest.raises(UnauthenticatedError):
            await stack.users.authenticate("bob", "wrong password!")
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("bob", "wrong password!")  # 6th failure is still checked ...
    with pytest.raises(RateLimitedError) as info:
        await stack.users.authenticate("bob", PW)  # ... but now even the right password must wait
    assert info.value.code == "users.login_throttled"
    assert info.value.retry_after == 1
    stack.clock.advance(1)
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("bob", "wrong password!")
    with pytest.raises(RateLimitedError) as info:
        await stack.users.authenticate("BOB", PW)
    assert info.value.retry_after == 2  # doubled
    stack.clock.advance(2)
    await stack.users.authenticate("bob", PW)  # success clears the account's failures
    for _ in range(5):
        with pytest.raises(UnauthenticatedError):
            await stack.users.authenticate("bob", "wrong password!")


async def test_unknown_accounts_are_throttled_the_same(stack: Stack) -> None:
    for _ in range(6):
        with pytest.raises(UnauthenticatedError):
            await stack.users.authenticate("ghost", "wrong password!")
    with pytest.raises(RateLimitedError):
        await stack.users.authenticate("ghost", "wrong password!")


async def test_never_more_than_100_failures_an_hour(stack: Stack) -> None:
    await stack.users.add("bob", PW)
    accepted = 0
    for _ in range(3000):  # an attacker retrying every 5 seconds for over four hours
        try:
            await stack.users.authenticate("bob", "wrong password!")
        except UnauthenticatedError:
            accepted += 1
        except RateLimitedError:
            pass
        stack.clock.advance(5)
    events = await stack.audit.query(action="users.login", limit=1000)
    times = sorted(e.created_at.timestamp() for e in events)
    assert accepted == len(times)
    for i, t in enumerate(times):  # any one-hour window holds at most 100 accepted failures
        assert sum(1 for u in times[i:] if u < t + 3600) <= 100


async def test_per_ip_throttle_and_ip_validation(stack: Stack) -> None:
    for i in range(20):  # spraying many accounts from one address
        with pytest.raises(UnauthenticatedError):
            await stack.users.authenticate(f"user{i:03d}", "wrong password!", client_ip="203.0.113.9")
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("user999", "wrong password!", client_ip="203.0.113.9")
    with pytest.raises(RateLimitedError):
        await stack.users.authenticate("user998", "wrong password!", client_ip="203.0.113.9")
    with pytest.raises(UnauthenticatedError):  # another address is not affected
        await stack.users.authenticate("user998", "wrong password!", client_ip="198.51.100.1")
    with pytest.raises(ValidationError) as info:
        await stack.users.authenticate("bob", PW, client_ip="1.2.3.4, 5.6.7.8")
    assert info.value.code == "users.invalid_client_ip"


async def test_outdated_hash_is_upgraded_on_login(stack: Stack) -> None:
    bob = await stack.users.add("bob", PW)
    old_hash = (await stack.store.get(bob.id)).password_hash  # type: ignore[union-attr]
    stronger = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    assert stronger.check_needs_rehash(old_hash)
    svc = stack.service(stronger)
    with pytest.raises(UnauthenticatedError):
        await svc.authenticate("bob", "wrong password!")
    assert (await stack.store.get(bob.id)).password_hash == old_hash  # type: ignore[union-attr]
    await svc.authenticate("bob", PW)
    new_hash = (await stack.store.get(bob.id)).password_hash  # type: ignore[union-attr]
    assert new_hash != old_hash
    assert not stronger.check_needs_rehash(new_hash)
    await svc.authenticate("bob", PW)


async def test_default_admin_random_password_once(stack: Stack) -> None:
    admin, generated = await stack.users.ensure_default_admin(None)
    assert generated is not None
    assert len(generated) >= 20
    assert admin.protected
    assert await stack.rbac.is_admin(admin.id)
    assert (await stack.users.authenticate("admin", generated)).id == admin.id
    again, none = await stack.users.ensure_default_admin("another password!")
    assert again.id == admin.id
    assert none is None
    events = await stack.audit.query(limit=1000)
    assert all(generated not in repr(e) for e in events)


async def test_default_admin_given_password(stack: Stack) -> None:
    with pytest.raises(ValidationError):
        await stack.users.ensure_default_admin("password")
    admin, generated = await stack.users.ensure_default_admin("a good admin passphrase", username="root")
    assert generated is None
    assert admin.username == "root"
    await stack.users.authenticate("root", "a good admin passphrase")


async def test_protected_admin_cannot_be_deleted_disabled_or_demoted(stack: Stack) -> None:
    admin, _ = await stack.users.ensure_default_admin(None)
    other = await stack.users.add("other", PW, roles=[ADMIN_ROLE])
    for op in (stack.users.delete, stack.users.disable):
        with pytest.raises(ForbiddenError) as info:
            await op(admin.id, actor_id=other.id)
        assert info.value.code == "users.protected"
    with pytest.raises(ForbiddenError) as info:
        await stack.rbac.revoke_role(other.id, admin.id, ADMIN_ROLE)
    assert info.value.code == "users.protected"
    assert (await stack.users.get(admin.id)).enabled
    assert await stack.rbac.is_admin(admin.id)


async def test_last_admin_cannot_be_removed(stack: Stack) -> None:
    solo = await stack.users.add("solo", PW, roles=[ADMIN_ROLE])
    for op in (stack.users.delete, stack.users.disable):
        with pytest.raises(ConflictError) as info:
            await op(solo.id)
        assert info.value.code == "users.last_admin"
    second = await stack.users.add("second", PW, roles=[ADMIN_ROLE])
    await stack.users.disable(solo.id)
    with pytest.raises(ConflictError):  # the disabled one does not count
        await stack.users.delete(second.id)


async def test_password_change_disable_delete_revoke_credentials(stack: Stack) -> None:
    bob = await stack.users.add("bob", PW)
    with pytest.raises(UnauthenticatedError):
        await stack.users.change_password(bob.id, "wrong password!", "a new passphrase")
    assert stack.revoker.calls == []
    with pytest.raises(ValidationError) as info:
        await stack.users.change_password(bob.id, PW, PW)
    assert info.value.code == "users.password_unchanged"
    await stack.users.change_password(bob.id, PW, "a new passphrase")
    assert stack.revoker.calls == [bob.id]
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("bob", PW)
    await stack.users.authenticate("bob", "a new passphrase")
    await stack.users.set_password(bob.id, "an admin chose this")
    await stack.users.disable(bob.id)
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("bob", "an admin chose this")
    await stack.users.enable(bob.id)
    await stack.users.authenticate("bob", "an admin chose this")
    await stack.users.delete(bob.id)
    assert stack.revoker.calls == [bob.id] * 4
    with pytest.raises(NotFoundError):
        await stack.users.get(bob.id)


async def test_failing_revoker_is_reported_and_others_still_run(clock: FakeClock) -> None:
    stack = make_stack(clock)
    broken, good = RecordingRevoker(fail=True), RecordingRevoker()
    svc = DefaultUserService(
        stack.store, stack.rbac, stack.audit, clock, hasher=CHEAP, revokers=[broken, good]
    )
    bob = await svc.add("bob", PW)
    with pytest.raises(UnavailableError) as info:
        await svc.disable(bob.id)
    assert info.value.code == "users.revocation_incomplete"
    assert good.calls == [bob.id]
    assert not (await svc.get(bob.id)).enabled


async def test_admin_actions_need_users_manage_and_cover_the_target(stack: Stack) -> None:
    admin = await stack.users.add("root", PW, roles=[ADMIN_ROLE])
    lead = await stack.users.add("lead", PW, roles=[TEAM_ADMIN_ROLE])
    member = await stack.users.add("member", PW, roles=[MEMBER_ROLE])
    with pytest.raises(ForbiddenError) as info:
        await stack.users.set_password(admin.id, "taken over now", actor_id=member.id)
    assert info.value.code == "rbac.forbidden"
    await stack.rbac.create_role(admin.id, "helpdesk", permissions=["users:manage", "keys:read"])
    await stack.rbac.assign_role(admin.id, lead.id, "helpdesk")
    with pytest.raises(ForbiddenError) as info:  # cannot take over a more privileged account
        await stack.users.set_password(admin.id, "taken over now", actor_id=lead.id)
    assert info.value.code == "users.forbidden_target"
    await stack.users.set_password(member.id, "reset by helpdesk", actor_id=lead.id)
    with pytest.raises(ForbiddenError):  # a plain member cannot create users
        await stack.users.add("eve", PW, actor_id=member.id)
    with pytest.raises(ForbiddenError) as info:  # nor can a helpdesk grant admin at creation
        await stack.users.add("eve", PW, roles=[ADMIN_ROLE], actor_id=lead.id)
    assert info.value.code == "rbac.escalation"
    assert await stack.store.get_by_username("eve") is None
    denied = [e for e in await stack.audit.query(limit=1000) if e.outcome is AuditOutcome.DENIED]
    assert {e.action for e in denied} >= {"users.password_set"}


async def test_change_password_is_throttled(stack: Stack) -> None:
    bob = await stack.users.add("bob", PW)
    for _ in range(6):
        with pytest.raises(UnauthenticatedError):
            await stack.users.change_password(bob.id, "wrong password!", "a new passphrase")
    with pytest.raises(RateLimitedError):
        await stack.users.change_password(bob.id, PW, "a new passphrase")


# -- review findings ----------------------------------------------------------------------------


async def test_trailing_newline_in_username_or_email_is_refused(stack: Stack) -> None:
    bob = await stack.users.add("bob", PW)
    for email in ("bob@example.com\n", "bob@example.com\r\n"):
        with pytest.raises(ValidationError) as info:
            await stack.users.add("bobby", PW, email=email)
        assert info.value.code == "users.invalid_email"
        with pytest.raises(ValidationError):
            await stack.users.update(bob.id, email=email)
    with pytest.raises(NotFoundError):
        await stack.users.get_by_username("bob\n")
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("bob\n", PW)
    assert [u.username for u in await stack.users.list()] == ["bob"]


async def test_concurrent_wrong_passwords_are_throttled_before_they_are_checked(clock: FakeClock) -> None:
    hasher = CountingHasher()
    stack = make_stack(clock, hasher=hasher)
    await stack.users.add("bob", PW)

    async def attempt(i: int) -> str:
        try:
            await stack.users.authenticate("bob", f"guess-number-{i:05d}", client_ip=f"203.0.113.{i}")
        except (UnauthenticatedError, RateLimitedError) as exc:
            return exc.code
        return "ok"

    # every verification runs in a thread: all 60 attempts are in flight at once
    outcomes = await asyncio.gather(*(attempt(i) for i in range(60)))
    assert outcomes.count("users.invalid_credentials") == 6  # 5 free failures, then the delay
    assert outcomes.count("users.login_throttled") == 54
    assert hasher.verifies == 6
    stack.clock.advance(1)
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("bob", "guess-again-0000")


async def test_successful_logins_do_not_spend_the_ip_budget(stack: Stack) -> None:
    await stack.users.add("bob", PW)
    for _ in range(30):  # the reserved attempt is taken back when the password is right
        await stack.users.authenticate("bob", PW, client_ip="203.0.113.9")
    for i in range(21):  # the IP still has its 20 free failures (and the 21st is checked)
        with pytest.raises(UnauthenticatedError):
            await stack.users.authenticate(f"user{i:03d}", "wrong password!", client_ip="203.0.113.9")
    with pytest.raises(RateLimitedError):
        await stack.users.authenticate("bob", PW, client_ip="203.0.113.9")


async def test_a_throttle_without_reserve_works_as_before(clock: FakeClock) -> None:
    class OldThrottle:  # a LoginThrottle written for an earlier maaskit
        def __init__(self) -> None:
            self.calls: list[str] = []

        async def check(self, account: str, client_ip: str | None) -> None:
            self.calls.append("check")

        async def record_failure(self, account: str, client_ip: str | None) -> None:
            self.calls.append("failure")

        async def record_success(self, account: str, client_ip: str | None) -> None:
            self.calls.append("success")

    stack = make_stack(clock)
    old = OldThrottle()
    svc = DefaultUserService(stack.store, stack.rbac, stack.audit, clock, hasher=CHEAP, throttle=old)  # type: ignore[arg-type]
    await svc.add("bob", PW)
    with pytest.raises(UnauthenticatedError):
        await svc.authenticate("bob", "wrong password!")
    await svc.authenticate("bob", PW)
    assert old.calls == ["check", "failure", "check", "success"]


async def test_password_accepted_at_creation_logs_in(stack: Stack) -> None:
    # 384 conjoining jamo: 1,152 bytes as typed, 128 syllables (384 bytes) once NFKC-normalised
    jamo = "\u1100\u1161\u11a8" * 128
    assert len(jamo.encode()) > 1024
    assert len(unicodedata.normalize("NFKC", jamo)) == 128
    bob = await stack.users.add("bob", jamo)
    assert (await stack.users.authenticate("bob", jamo)).id == bob.id
    assert (await stack.users.authenticate("bob", unicodedata.normalize("NFC", jamo))).id == bob.id
    await stack.users.change_password(bob.id, jamo, "a new passphrase")
    await stack.users.set_password(bob.id, jamo)
    assert (await stack.users.authenticate("bob", jamo)).id == bob.id
    # what creation refuses, login refuses before any normalisation work
    with pytest.raises(ValidationError):
        validate_password(jamo + "\u1100\u1161\u11a8")
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("bob", jamo + "\u1100\u1161\u11a8")
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("bob", "x" * 1_000_000)


async def test_delete_revokes_credentials_before_deleting(clock: FakeClock) -> None:
    stack = make_stack(clock)
    broken = RecordingRevoker(fail=True)
    svc = DefaultUserService(stack.store, stack.rbac, stack.audit, clock, hasher=CHEAP, revokers=[broken])
    bob = await svc.add("bob", PW, roles=[MEMBER_ROLE])
    with pytest.raises(UnavailableError) as info:
        await svc.delete(bob.id)
    assert info.value.code == "users.revocation_incomplete"
    # nothing was deleted: the account and its roles stay, so its keys keep its own permissions
    assert (await svc.get(bob.id)).enabled
    assert {a.role for a in await stack.rbac.user_roles(bob.id)} == {MEMBER_ROLE}
    assert not [
        e for e in await stack.audit.query(action="users.deleted") if e.outcome is AuditOutcome.SUCCESS
    ]
    broken.fail = False
    await svc.delete(bob.id)  # a retry works
    assert broken.calls == [bob.id, bob.id]
    with pytest.raises(NotFoundError):
        await svc.get(bob.id)
    assert await stack.rbac.user_roles(bob.id) == []


async def test_a_user_manager_cannot_take_over_a_disabled_or_team_scoped_admin(stack: Stack) -> None:
    root = await stack.users.add("root", PW, roles=[ADMIN_ROLE])
    dormant = await stack.users.add("dormant", PW, roles=[ADMIN_ROLE])
    scoped = await stack.users.add("scoped", PW)
    await stack.rbac.assign_role(root.id, scoped.id, ADMIN_ROLE, team_id="team-a")
    helpdesk = await stack.users.add("helpdesk", PW)
    await stack.rbac.create_role(root.id, "helpdesk", permissions=["users:manage", "users:read"])
    await stack.rbac.assign_role(root.id, helpdesk.id, "helpdesk")
    await stack.users.disable(dormant.id)
    for target in (dormant.id, scoped.id):
        with pytest.raises(ForbiddenError) as info:  # then enable it and sign in as an admin
            await stack.users.set_password(target, "taken over now", actor_id=helpdesk.id)
        assert info.value.code == "users.forbidden_target"
        with pytest.raises(ForbiddenError):
            await stack.users.enable(target, actor_id=helpdesk.id)
    with pytest.raises(UnauthenticatedError):
        await stack.users.authenticate("dormant", "taken over now")
    await stack.users.set_password(dormant.id, "reset by root", actor_id=root.id)

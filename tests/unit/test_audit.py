"""AuditLog: append-only records, queries, and secrets never stored."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest

import maaskit.storage.sql.audit as sql_audit
from maaskit.errors import ValidationError
from maaskit.services.audit import (
    REDACTED,
    AuditLog,
    AuditOutcome,
    DefaultAuditLog,
    is_sensitive_name,
    scrub_details,
    scrub_text,
)
from maaskit.storage.memory.audit import MemoryAuditStore
from maaskit.testing.clock import FakeClock

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c3JfMSJ9.c2lnbmF0dXJlLWJ5dGVz"
MK = "mk_AbCdEf0123456789xyzXYZ_abcdef"


@pytest.fixture
def audit(clock: FakeClock) -> DefaultAuditLog:
    return DefaultAuditLog(MemoryAuditStore(), clock)


def test_conforms_to_protocol(audit: DefaultAuditLog) -> None:
    assert isinstance(audit, AuditLog)


async def test_record_and_query_by_filters(audit: DefaultAuditLog, clock: FakeClock) -> None:
    first = await audit.record("usr_a", "users.created", "usr_b", "success", details={"roles": "member"})
    clock.advance(10)
    second = await audit.record("usr_a", "rbac.role_assigned", "usr_c", AuditOutcome.DENIED)
    clock.advance(10)
    third = await audit.record("usr_z", "users.deleted", "usr_b", "failure")

    assert first.details == {"roles": "member"}
    assert [e.id for e in await audit.query()] == [third.id, second.id, first.id]
    assert [e.id for e in await audit.query(actor="usr_a")] == [second.id, first.id]
    assert [e.id for e in await audit.query(target="usr_b")] == [third.id, first.id]
    assert [e.id for e in await audit.query(action="rbac.role_assigned")] == [second.id]
    assert [e.id for e in await audit.query(since=second.created_at)] == [third.id, second.id]
    assert [e.id for e in await audit.query(until=second.created_at)] == [first.id]
    assert [e.id for e in await audit.query(limit=1)] == [third.id]
    assert second.outcome is AuditOutcome.DENIED


async def test_ties_are_ordered_by_id(audit: DefaultAuditLog) -> None:
    ids = [(await audit.record("a", "x.y", "t", "success")).id for _ in range(5)]
    assert [e.id for e in await audit.query()] == sorted(ids, reverse=True)


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "new_password",
        "Secret",
        "client_secret",
        "token",
        "refresh_token",
        "api_key",
        "key",
        "private_key",
        "cookie",
        "authorization",
        "session_id",
        "password_hash",
        "otp",
    ],
)
def test_sensitive_names(name: str) -> None:
    assert is_sensitive_name(name)


@pytest.mark.parametrize("name", ["role", "user_id", "key_id", "team_id", "permission", "reason", "jti"])
def test_ordinary_names(name: str) -> None:
    assert not is_sensitive_name(name)


async def test_secret_details_are_redacted(audit: DefaultAuditLog) -> None:
    event = await audit.record(
        "usr_a",
        "users.password_set",
        "usr_b",
        "success",
        details={
            "password": "hunter2hunter2",
            "api_key": "whatever",
            "note": f"rotated {MK} today",
            "header": f"Bearer {JWT}",
            "raw": JWT,
            "count": 3,
            "flag": True,
        },
    )
    stored = (await audit.query())[0]
    for ev in (event, stored):
        assert ev.details["password"] == REDACTED
        assert ev.details["api_key"] == REDACTED
        assert ev.details["note"] == f"rotated {REDACTED} today"
        assert ev.details["raw"] == REDACTED
        assert JWT not in str(ev.details["header"])
        assert ev.details["count"] == 3
        assert ev.details["flag"] is True
        assert "hunter2" not in repr(ev)
        assert MK not in repr(ev)


async def test_secrets_in_actor_and_target_are_redacted(audit: DefaultAuditLog) -> None:
    event = await audit.record(MK, "api_keys.used", f"key {JWT}", "failure")
    assert MK not in event.actor
    assert JWT not in event.target


@pytest.mark.parametrize(
    "value",
    [
        "sk-abcdefghijklmnopqrstuv",
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        "-----BEGIN PRIVATE KEY-----",
        "Basic dXNlcjpwYXNzd29yZA==",
    ],
)
def test_scrub_text_catches_other_secret_shapes(value: str) -> None:
    assert value not in scrub_text(value)
    assert REDACTED in scrub_text(value)


def test_scrub_text_keeps_ordinary_text() -> None:
    assert scrub_text("role member granted to usr_1234") == "role member granted to usr_1234"


@pytest.mark.parametrize(
    "details",
    [
        {"bad name!": "x"},
        {"x": 1.5},
        {"x": None},
        {"x": ["a"]},
        {"x": "y" * 1025},
        {f"k{i}": 1 for i in range(33)},
    ],
)
def test_invalid_details_refused(details: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as info:
        scrub_details(details)
    assert info.value.code == "audit.invalid_details"


async def test_invalid_inputs(audit: DefaultAuditLog) -> None:
    with pytest.raises(ValidationError, match="action"):
        await audit.record("a", "NotDotted", "t", "success")
    with pytest.raises(ValidationError) as info:
        await audit.record("a", "x.y", "t", "maybe")
    assert info.value.code == "audit.invalid_outcome"
    with pytest.raises(ValidationError) as info:
        await audit.record("", "x.y", "t", "success")
    assert info.value.code == "audit.invalid_field"
    with pytest.raises(ValidationError) as info:
        await audit.query(limit=0)
    assert info.value.code == "audit.invalid_limit"
    with pytest.raises(ValidationError) as info:
        await audit.query(limit=1001)
    assert info.value.code == "audit.invalid_limit"
    now = FakeClock().now()
    with pytest.raises(ValidationError) as info:
        await audit.query(since=now, until=now - timedelta(seconds=1))
    assert info.value.code == "audit.invalid_range"
    with pytest.raises(ValidationError) as info:
        await audit.query(since=now.replace(tzinfo=None))
    assert info.value.code == "audit.invalid_range"
    assert await audit.query() == []  # nothing half-written


def test_append_only_api() -> None:
    for cls in (DefaultAuditLog, MemoryAuditStore, sql_audit.SqlAuditStore):
        public = {name for name in dir(cls) if not name.startswith("_")}
        assert not public & {"update", "delete", "remove", "clear", "purge", "truncate"}, cls
    source = inspect.getsource(sql_audit)
    assert "sa.update" not in source
    assert "sa.delete" not in source

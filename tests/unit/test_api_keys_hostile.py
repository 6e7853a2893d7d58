"""Hostile input for API keys: refused before any storage or cache call, typed errors, no secret leaks."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from structlog.testing import capture_logs

from maaskit.errors import MaasError, UnauthenticatedError, ValidationError
from maaskit.services.api_keys import DefaultApiKeyService, generate_key, parse_key
from maaskit.storage.memory.api_keys import MemoryApiKeyStore
from maaskit.storage.ports.api_keys import ApiKeyRecord
from maaskit.testing.clock import FakeClock

PEPPER = b"k" * 32


class RecordingStore(MemoryApiKeyStore):
    """A memory store that records every method call."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        super().__init__()
        self.calls: builtins.list[str] = []

    async def insert(self, record: ApiKeyRecord) -> None:
        self.calls.append("insert")
        await super().insert(record)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        self.calls.append("get")
        return await super().get(key_id)

    async def find_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        self.calls.append("find_by_digest")
        return await super().find_by_digest(digest)

    async def update(self, record: ApiKeyRecord, *, expected_version: int) -> bool:
        self.calls.append("update")
        return await super().update(record, expected_version=expected_version)

    async def list(self, **filters: Any) -> builtins.list[ApiKeyRecord]:
        self.calls.append("list")
        return await super().list(**filters)


class RecordingDict(dict[Any, Any]):
    """Stands in for the service's cache dict and records reads and writes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: builtins.list[str] = []

    def get(self, key: Any, default: Any = None) -> Any:
        self.calls.append("get")
        return super().get(key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        self.calls.append("pop")
        return super().pop(key, *default)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.calls.append("set")
        super().__setitem__(key, value)


def _flip(text: str, index: int) -> str:
    ch = text[index]
    return text[:index] + ("A" if ch != "A" else "B") + text[index + 1 :]


VALID = generate_key()
HOSTILE: dict[str, object] = {
    "flipped checksum": _flip(VALID, len(VALID) - 1),
    "flipped body": _flip(VALID, 10),
    "truncated": VALID[:-1],
    "extended": VALID + "0",
    "empty": "",
    "one megabyte": "mk_" + "a" * 1_000_000,
    "one megabyte right length prefix": VALID + "\x00" * 1_000_000,
    "NUL byte": VALID[:20] + "\x00" + VALID[21:],
    "non-ASCII": VALID[:20] + "é" + VALID[21:],
    "fullwidth digit": VALID[:20] + "\uff11" + VALID[21:],
    "SQL-ish": "mk_' OR '1'='1'; DROP TABLE maaskit_api_keys; --".ljust(52, "-"),
    "upper-case prefix": "MK_" + VALID[3:],
    "leading whitespace": " " + VALID[:-1],
    "trailing newline": VALID[:-1] + "\n",
    "Bearer prefix": "Bearer " + VALID,
    "no prefix": VALID[3:],
    "bytes": VALID.encode(),
    "None": None,
    "int": 12345,
}


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def keys(store: RecordingStore, clock: FakeClock) -> DefaultApiKeyService:
    return DefaultApiKeyService(store, clock, pepper=PEPPER)


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_malformed_keys_are_refused_before_any_store_or_cache_call(
    keys: DefaultApiKeyService, store: RecordingStore, text: object
) -> None:
    cache = RecordingDict()
    keys._cache = cache
    with pytest.raises(UnauthenticatedError) as info:
        await keys.validate(text)  # type: ignore[arg-type]
    assert info.value.code == "api_key.malformed"
    assert store.calls == []
    assert cache.calls == []
    assert info.value.params == {}
    with pytest.raises(UnauthenticatedError):
        parse_key(text)


async def test_a_well_formed_key_does_reach_the_store_and_cache(
    keys: DefaultApiKeyService, store: RecordingStore
) -> None:
    # The counterpart of the test above: the recording doubles do see a valid key's lookup.
    cache = RecordingDict()
    keys._cache = cache
    with pytest.raises(UnauthenticatedError):
        await keys.validate(VALID)
    assert store.calls == ["find_by_digest"]
    assert "get" in cache.calls


BAD_BUDGETS: list[object] = [
    -1,
    -(2**63),
    2**63,
    1.5,
    0.0,
    float("nan"),
    float("inf"),
    True,
    "100",
    Decimal("1"),
]


@pytest.mark.parametrize("budget", BAD_BUDGETS, ids=repr)
async def test_bad_budgets_are_refused_and_nothing_is_written(
    keys: DefaultApiKeyService, store: RecordingStore, budget: object
) -> None:
    with pytest.raises(ValidationError) as info:
        await keys.create("u", name="k", budget_micros=budget)  # type: ignore[arg-type]
    assert info.value.code == "money.invalid"
    assert store.calls == []
    created = await keys.create("u", name="k", budget_micros=1)
    store.calls.clear()
    with pytest.raises(ValidationError):
        await keys.update_budget(created.key.id, budget)  # type: ignore[arg-type]
    assert store.calls == []
    assert (await keys.get(created.key.id)).budget_micros == 1


BAD_CREATE: list[dict[str, Any]] = [
    {"owner_id": ""},
    {"owner_id": "x" * 257},
    {"owner_id": "a\x00b"},
    {"owner_id": 5},
    {"name": "line\nbreak"},
    {"team_id": ""},
    {"allowed_models": "gpt-4o"},
    {"allowed_models": ["ok", ""]},
    {"rpm_limit": 0},
    {"rpm_limit": -5},
    {"rpm_limit": 1.5},
    {"rpm_limit": float("nan")},
    {"tpm_limit": True},
    {"tpm_limit": 2**70},
    {"expires_at": datetime(2030, 1, 1)},
    {"expires_at": datetime(2000, 1, 1, tzinfo=UTC)},
    {"expires_at": "2030-01-01"},
    {"expires_at": datetime.max.replace(tzinfo=timezone(-timedelta(hours=14)))},  # year 10000 in UTC
    {"metadata": {"k": 5}},
    {"metadata": {"k": "v\x00"}},
]


@pytest.mark.parametrize("bad", BAD_CREATE, ids=repr)
async def test_bad_create_arguments_are_typed_errors_and_nothing_is_written(
    keys: DefaultApiKeyService, store: RecordingStore, bad: dict[str, Any]
) -> None:
    kwargs: dict[str, Any] = {"owner_id": "u", "name": "k", **bad}
    owner = kwargs.pop("owner_id")
    with pytest.raises(ValidationError) as info:
        await keys.create(owner, **kwargs)
    assert info.value.code == "api_key.invalid_field"
    assert store.calls == []
    assert len(store) == 0


@pytest.mark.parametrize("grace", [-1, float("nan"), float("inf"), True, "60", 10**9])
async def test_bad_grace_is_refused_before_any_store_call(
    keys: DefaultApiKeyService, store: RecordingStore, grace: object
) -> None:
    created = await keys.create("u", name="k")
    store.calls.clear()
    with pytest.raises(ValidationError):
        await keys.rotate(created.key.id, grace_seconds=grace)  # type: ignore[arg-type]
    assert store.calls == []


async def test_update_limits_refuses_bad_values_without_writing(
    keys: DefaultApiKeyService, store: RecordingStore, clock: FakeClock
) -> None:
    created = await keys.create("u", name="k", rpm_limit=3)
    store.calls.clear()
    for bad in ({"rpm_limit": -1}, {"tpm_limit": 0.5}, {"expires_at": clock.now() - timedelta(1)}):
        with pytest.raises(ValidationError):
            await keys.update_limits(created.key.id, **bad)
    assert store.calls == []


async def test_secrets_never_reach_logs_errors_or_reprs(keys: DefaultApiKeyService, clock: FakeClock) -> None:
    idem = "idempotency-key-0123456789"
    with capture_logs() as logs:
        created = await keys.create("u", name="k", expires_at=clock.now() + timedelta(seconds=10))
        await keys.validate(created.secret)
        rotation = await keys.rotate(created.key.id, idempotency_key=idem)
        replay = await keys.rotate(created.key.id, idempotency_key=idem)
        await keys.update_budget(created.key.id, 5)
        await keys.set_enabled(created.key.id, False)
        errors: list[MaasError] = []
        for secret in (created.secret, rotation.secret):
            try:
                await keys.validate(secret)
            except MaasError as exc:
                errors.append(exc)
        await keys.set_enabled(created.key.id, True)
        clock.advance(10)
        try:
            await keys.validate(rotation.secret)
        except MaasError as exc:
            errors.append(exc)
        await keys.revoke(created.key.id)
        try:
            await keys.validate(rotation.secret)
        except MaasError as exc:
            errors.append(exc)
    assert [e.code for e in errors] == [
        "api_key.disabled",
        "api_key.disabled",
        "api_key.expired",
        "api_key.revoked",
    ]
    assert logs, "the service logs its changes"
    secrets = (created.secret, rotation.secret, idem)
    texts = [repr(logs), repr(created), repr(rotation), repr(replay), repr(keys)]
    for error in errors:
        texts += [str(error), repr(error), error.render("de"), repr(error.to_dict())]
    for text in texts:
        for secret in secrets:
            assert secret not in text
            assert secret[3:20] not in text

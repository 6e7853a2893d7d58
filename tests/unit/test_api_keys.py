"""ApiKeyService behaviour: create, validate, cache, rotate (grace, idempotency), revoke, toggle, limits."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import attrs
import pytest

from maaskit.errors import ConflictError, NotFoundError, UnauthenticatedError, ValidationError
from maaskit.services.api_keys import (
    KEY_LENGTH,
    ApiKeyService,
    CreatedKey,
    DefaultApiKeyService,
    KeyRotation,
    parse_key,
)
from maaskit.storage.memory.api_keys import MemoryApiKeyStore
from maaskit.storage.ports.api_keys import ApiKeyRecord, ApiKeyStore
from maaskit.testing.clock import FakeClock

PEPPER = b"p" * 32
IDEM = "3f1c2a9e-1d5b-4b7a-9a55-0f6e1c2d3b4a"


@pytest.fixture
def store() -> MemoryApiKeyStore:
    return MemoryApiKeyStore()


@pytest.fixture
def keys(store: MemoryApiKeyStore, clock: FakeClock) -> DefaultApiKeyService:
    return DefaultApiKeyService(store, clock, pepper=PEPPER)


async def _code(awaitable: object) -> str:
    with pytest.raises(UnauthenticatedError) as info:
        await awaitable  # type: ignore[misc]
    return info.value.code


def test_protocol_conformance(store: MemoryApiKeyStore, keys: DefaultApiKeyService) -> None:
    assert isinstance(keys, ApiKeyService)
    assert isinstance(store, ApiKeyStore)


async def test_create_returns_the_secret_once_and_stores_only_a_digest(
    keys: DefaultApiKeyService, store: MemoryApiKeyStore
) -> None:
    created = await keys.create(
        "user_1",
        name="laptop",
        team_id="team_1",
        allowed_models=["gpt-4o"],
        budget_micros=5_000_000,
        rpm_limit=60,
        tpm_limit=10_000,
        metadata={"env": "dev"},
    )
    assert isinstance(created, CreatedKey)
    assert parse_key(created.secret) == created.secret
    assert len(created.secret) == KEY_LENGTH
    key = created.key
    assert key.hint == "mk_…" + created.secret[-4:]
    assert (key.owner_id, key.team_id, key.name) == ("user_1", "team_1", "laptop")
    assert key.allowed_models == frozenset({"gpt-4o"})
    assert (key.budget_micros, key.rpm_limit, key.tpm_limit) == (5_000_000, 60, 10_000)
    assert key.allows_model("gpt-4o")
    assert not key.allows_model("gpt-3.5")
    record = await store.get(key.id)
    assert record is not None
    assert created.secret not in repr(record)
    assert created.secret.encode() not in record.digest
    assert created.secret not in repr(created)
    assert await keys.validate(created.secret) == key


async def test_each_key_is_different(keys: DefaultApiKeyService) -> None:
    a = await keys.create("u", name="a")
    b = await keys.create("u", name="b")
    assert a.secret != b.secret
    assert a.key.id != b.key.id


async def test_unknown_well_formed_key(keys: DefaultApiKeyService) -> None:
    other = DefaultApiKeyService(MemoryApiKeyStore(), FakeClock(), pepper=PEPPER)
    stranger = await other.create("u", name="elsewhere")
    assert await _code(keys.validate(stranger.secret)) == "api_key.unknown"


async def test_a_different_pepper_does_not_validate(store: MemoryApiKeyStore, clock: FakeClock) -> None:
    a = DefaultApiKeyService(store, clock, pepper=PEPPER)
    created = await a.create("u", name="k")
    b = DefaultApiKeyService(store, clock, pepper=b"q" * 32)
    assert await _code(b.validate(created.secret)) == "api_key.unknown"


@pytest.mark.parametrize("pepper", [b"short", b"x" * 31, "y" * 40, None])
def test_weak_pepper_refused(store: MemoryApiKeyStore, clock: FakeClock, pepper: object) -> None:
    with pytest.raises(ValidationError) as info:
        DefaultApiKeyService(store, clock, pepper=pepper)  # type: ignore[arg-type]
    assert info.value.code == "api_key.invalid_pepper"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cache_ttl": -1},
        {"cache_ttl": float("nan")},
        {"rotation_grace": float("inf")},
        {"max_cache_entries": 0},
    ],
)
def test_bad_service_settings_refused(
    store: MemoryApiKeyStore, clock: FakeClock, kwargs: dict[str, object]
) -> None:
    with pytest.raises(ValidationError):
        DefaultApiKeyService(store, clock, pepper=PEPPER, **kwargs)  # type: ignore[arg-type]


async def test_revoke_disable_expire_have_precise_codes(keys: DefaultApiKeyService, clock: FakeClock) -> None:
    revoked = await keys.create("u", name="r")
    disabled = await keys.create("u", name="d")
    expiring = await keys.create("u", name="e", expires_at=clock.now() + timedelta(hours=1))
    for created in (revoked, disabled, expiring):  # warm the cache first: invalidation must be immediate
        await keys.validate(created.secret)
    await keys.revoke(revoked.key.id)
    await keys.set_enabled(disabled.key.id, False)
    clock.advance(hours=1)
    assert await _code(keys.validate(revoked.secret)) == "api_key.revoked"
    assert await _code(keys.validate(disabled.secret)) == "api_key.disabled"
    assert await _code(keys.validate(expiring.secret)) == "api_key.expired"
    await keys.set_enabled(disabled.key.id, True)
    assert (await keys.validate(disabled.secret)).enabled


async def test_revoke_is_idempotent_and_final(keys: DefaultApiKeyService) -> None:
    created = await keys.create("u", name="k")
    first = await keys.revoke(created.key.id)
    assert first.revoked_at is not None
    assert await keys.revoke(created.key.id) == first
    with pytest.raises(ConflictError) as info:
        await keys.set_enabled(created.key.id, True)
    assert info.value.code == "api_key.revoked_immutable"
    with pytest.raises(ConflictError):
        await keys.rotate(created.key.id)
    with pytest.raises(ConflictError):
        await keys.update_budget(created.key.id, 1)


async def test_cache_serves_without_store_reads_and_ttl_refreshes(
    store: MemoryApiKeyStore, clock: FakeClock, keys: DefaultApiKeyService
) -> None:
    created = await keys.create("u", name="k")
    await keys.validate(created.secret)
    # Change the store behind the service's back (as another replica without a bus would).
    record = await store.get(created.key.id)
    assert record is not None
    await store.update(attrs.evolve(record, enabled=False, version=2), expected_version=1)
    assert (await keys.validate(created.secret)).enabled  # served from the cache
    clock.advance(60)  # cache_ttl bounds staleness
    assert await _code(keys.validate(created.secret)) == "api_key.disabled"


async def test_cache_ttl_zero_disables_cache(store: MemoryApiKeyStore, clock: FakeClock) -> None:
    keys = DefaultApiKeyService(store, clock, pepper=PEPPER, cache_ttl=0)
    created = await keys.create("u", name="k")
    await keys.validate(created.secret)
    assert keys.cached_keys == 0


async def test_cache_is_bounded(store: MemoryApiKeyStore, clock: FakeClock) -> None:
    keys = DefaultApiKeyService(store, clock, pepper=PEPPER, max_cache_entries=3)
    created = [await keys.create("u", name=str(i)) for i in range(5)]
    for c in created:
        await keys.validate(c.secret)
    assert keys.cached_keys == 3
    await keys.revoke(created[0].key.id)  # evicted earlier; still refused
    assert await _code(keys.validate(created[0].secret)) == "api_key.revoked"
    await keys.revoke(created[4].key.id)
    assert await _code(keys.validate(created[4].secret)) == "api_key.revoked"


async def test_rotate_keeps_id_and_old_secret_works_for_the_grace_period(
    keys: DefaultApiKeyService, clock: FakeClock
) -> None:
    created = await keys.create("u", name="k", budget_micros=7)
    await keys.validate(created.secret)
    rotation = await keys.rotate(created.key.id, grace_seconds=3600)
    assert isinstance(rotation, KeyRotation)
    assert not rotation.replayed
    assert rotation.key.id == created.key.id
    assert rotation.key.budget_micros == 7
    assert rotation.secret != created.secret
    assert rotation.key.rotation_counter == 1
    assert rotation.previous_valid_until == clock.now() + timedelta(hours=1)
    assert (await keys.validate(rotation.secret)).id == created.key.id
    assert (await keys.validate(created.secret)).id == created.key.id
    clock.advance(3599)
    assert (await keys.validate(created.secret)).id == created.key.id
    clock.advance(1)
    assert await _code(keys.validate(created.secret)) == "api_key.rotated"
    assert (await keys.validate(rotation.secret)).id == created.key.id


async def test_rotate_default_grace_is_24h(keys: DefaultApiKeyService, clock: FakeClock) -> None:
    created = await keys.create("u", name="k")
    rotation = await keys.rotate(created.key.id)
    assert rotation.previous_valid_until == clock.now() + timedelta(hours=24)


async def test_rotate_with_zero_grace_kills_the_old_secret_at_once(keys: DefaultApiKeyService) -> None:
    created = await keys.create("u", name="leaked")
    await keys.validate(created.secret)
    rotation = await keys.rotate(created.key.id, grace_seconds=0)
    assert rotation.previous_valid_until is None
    assert await _code(keys.validate(created.secret)) == "api_key.unknown"
    assert (await keys.validate(rotation.secret)).id == created.key.id


async def test_rotating_again_ends_the_previous_grace(keys: DefaultApiKeyService) -> None:
    created = await keys.create("u", name="k")
    first = await keys.rotate(created.key.id)
    second = await keys.rotate(created.key.id)
    assert await _code(keys.validate(created.secret)) == "api_key.unknown"
    assert (await keys.validate(first.secret)).id == created.key.id
    assert (await keys.validate(second.secret)).id == created.key.id


async def test_rotate_is_idempotent_with_the_same_idempotency_key(
    keys: DefaultApiKeyService, store: MemoryApiKeyStore
) -> None:
    created = await keys.create("u", name="k")
    first = await keys.rotate(created.key.id, idempotency_key=IDEM)
    retry = await keys.rotate(created.key.id, idempotency_key=IDEM)
    assert retry.replayed
    assert retry.secret == first.secret
    assert retry.key.rotation_counter == first.key.rotation_counter == 1
    assert (await keys.validate(created.secret)).id == created.key.id  # grace of the single rotation
    other = await keys.rotate(created.key.id, idempotency_key=IDEM[::-1])
    assert not other.replayed
    assert other.secret != first.secret
    assert other.key.rotation_counter == 2
    record = await store.get(created.key.id)
    assert record is not None
    assert IDEM.encode() not in repr(record).encode()


async def test_concurrent_retries_of_one_idempotent_rotation_rotate_once(keys: DefaultApiKeyService) -> None:
    created = await keys.create("u", name="k")
    results = await asyncio.gather(*(keys.rotate(created.key.id, idempotency_key=IDEM) for _ in range(5)))
    assert len({r.secret for r in results}) == 1
    assert {r.key.rotation_counter for r in results} == {1}


async def test_a_new_pepper_never_replays_an_old_idempotent_rotation(
    store: MemoryApiKeyStore, clock: FakeClock
) -> None:
    a = DefaultApiKeyService(store, clock, pepper=PEPPER)
    created = await a.create("u", name="k")
    await a.rotate(created.key.id, idempotency_key=IDEM)
    record = await store.get(created.key.id)
    assert record is not None
    # The idempotency digest matches under the old pepper only; a new pepper rotates afresh.
    b = DefaultApiKeyService(store, clock, pepper=b"z" * 32)
    fresh = await b.rotate(created.key.id, idempotency_key=IDEM)
    assert not fresh.replayed


@pytest.mark.parametrize("idem", ["short", "x" * 201, "ü" * 20, "a\x00" * 10, 12345])
async def test_bad_idempotency_keys_refused(keys: DefaultApiKeyService, idem: object) -> None:
    created = await keys.create("u", name="k")
    with pytest.raises(ValidationError) as info:
        await keys.rotate(created.key.id, idempotency_key=idem)  # type: ignore[arg-type]
    assert info.value.code == "api_key.invalid_idempotency_key"
    assert (await keys.get(created.key.id)).rotation_counter == 0


async def test_get_list_and_not_found(keys: DefaultApiKeyService, clock: FakeClock) -> None:
    a = await keys.create("alice", name="a", team_id="t")
    clock.advance(1)  # list() orders by created_at, then id
    b = await keys.create("bob", name="b")
    clock.advance(1)
    c = await keys.create("alice", name="c")
    await keys.revoke(c.key.id)
    assert await keys.get(a.key.id) == a.key
    assert [k.id for k in await keys.list()] == [a.key.id, b.key.id]
    assert [k.id for k in await keys.list(owner_id="alice", include_revoked=True)] == [a.key.id, c.key.id]
    assert [k.id for k in await keys.list(team_id="t")] == [a.key.id]
    with pytest.raises(NotFoundError) as info:
        await keys.get("key_nope")
    assert info.value.code == "api_key.not_found"
    with pytest.raises(NotFoundError):
        await keys.revoke("key_nope")


async def test_update_budget_and_limits_invalidate_the_cache(
    keys: DefaultApiKeyService, clock: FakeClock
) -> None:
    created = await keys.create("u", name="k", budget_micros=10, rpm_limit=5)
    await keys.validate(created.secret)
    await keys.update_budget(created.key.id, 2_000_000)
    assert (await keys.validate(created.secret)).budget_micros == 2_000_000
    await keys.update_limits(created.key.id, tpm_limit=100, allowed_models=["m"])
    key = await keys.validate(created.secret)
    assert (key.rpm_limit, key.tpm_limit, key.allowed_models) == (5, 100, frozenset({"m"}))
    await keys.update_limits(created.key.id, rpm_limit=None, expires_at=clock.now() + timedelta(seconds=5))
    key = await keys.validate(created.secret)
    assert key.rpm_limit is None
    assert key.expires_at is not None
    await keys.update_budget(created.key.id, None)
    assert (await keys.validate(created.secret)).budget_micros is None
    clock.advance(5)
    assert await _code(keys.validate(created.secret)) == "api_key.expired"


async def test_update_limits_with_nothing_changes_nothing(keys: DefaultApiKeyService) -> None:
    created = await keys.create("u", name="k")
    assert await keys.update_limits(created.key.id) == created.key


async def test_ping(keys: DefaultApiKeyService) -> None:
    await keys.ping()


class _GatedStore(MemoryApiKeyStore):
    """Counts digest look-ups and holds each one until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.gate = asyncio.Event()

    async def find_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        self.lookups += 1
        await self.gate.wait()
        return await super().find_by_digest(digest)


async def test_concurrent_misses_of_one_key_share_one_store_lookup(clock: FakeClock) -> None:
    store = _GatedStore()
    keys = DefaultApiKeyService(store, clock, pepper=PEPPER)
    store.gate.set()
    created = await keys.create("user_1", name="k")
    keys.invalidate_cached()  # the next validations miss the cache
    store.lookups = 0
    store.gate.clear()
    waiting = [asyncio.ensure_future(keys.validate(created.secret)) for _ in range(20)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # a caller that leaves does not cancel the others' look-up
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*waiting[1:])
    assert store.lookups == 1
    assert all(key == created.key for key in results)
    assert waiting[0].cancelled()
    assert keys._lookups == {}


async def test_a_request_after_an_invalidation_never_joins_an_earlier_lookup(clock: FakeClock) -> None:
    store = _GatedStore()
    keys = DefaultApiKeyService(store, clock, pepper=PEPPER)
    store.gate.set()
    created = await keys.create("user_1", name="k")
    keys.invalidate_cached()
    store.lookups = 0
    store.gate.clear()
    before = asyncio.ensure_future(keys.validate(created.secret))
    await asyncio.sleep(0)
    await keys.revoke(created.key.id)  # invalidates: a new epoch
    after = asyncio.ensure_future(keys.validate(created.secret))
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(before, after, return_exceptions=True)
    assert store.lookups == 2  # the later request read the store itself
    assert await _code(after) == "api_key.revoked"
    assert keys.cached_keys == 0  # the earlier read was not cached

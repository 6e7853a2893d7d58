"""The contract every :class:`~maaskit.storage.ports.api_keys.ApiKeyStore` must pass.

maaskit runs this suite on :class:`~maaskit.storage.memory.api_keys.MemoryApiKeyStore` and on
:class:`~maaskit.storage.sql.api_keys.SqlApiKeyStore` (SQLite and PostgreSQL). Run it on your own
store by subclassing :class:`ApiKeyStoreContract` in a test module and providing a ``store``
fixture (a fresh, empty store per test).

Example::

    import pytest
    from maaskit.testing.contracts.api_key_store import ApiKeyStoreContract

    class TestMyStore(ApiKeyStoreContract):
        @pytest.fixture
        async def store(self):
            return MyApiKeyStore()

The suite needs ``pytest`` and ``pytest-asyncio``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from maaskit.errors import ConflictError
from maaskit.storage.ports.api_keys import ApiKeyRecord, ApiKeyStore

__all__ = ["ApiKeyStoreContract", "make_record"]

_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_counter = itertools.count()


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def make_record(**overrides: Any) -> ApiKeyRecord:
    """A valid record with unique id and digest; keyword arguments override fields."""
    n = next(_counter)
    fields: dict[str, Any] = {
        "id": f"key_contract_{n}",
        "digest": _digest(f"digest-{n}"),
        "hint": "mk_…abcd",
        "owner_id": "owner_1",
        "team_id": None,
        "name": f"key {n}",
        "allowed_models": frozenset(),
        "budget_micros": None,
        "rpm_limit": None,
        "tpm_limit": None,
        "expires_at": None,
        "enabled": True,
        "revoked_at": None,
        "created_at": _T0 + timedelta(seconds=n),
        "updated_at": _T0 + timedelta(seconds=n),
    }
    fields.update(overrides)
    return ApiKeyRecord(**fields)


class ApiKeyStoreContract:
    """Behaviour shared by every API key store. Subclass it and provide a ``store`` fixture."""

    @pytest.fixture
    async def store(self) -> ApiKeyStore:
        """A fresh, empty store (override in the subclass)."""
        raise NotImplementedError("provide a `store` fixture")

    async def test_insert_then_get_round_trips_every_field(self, store: ApiKeyStore) -> None:
        record = make_record(
            team_id="team_1",
            allowed_models=frozenset({"gpt-4o", "llama-3"}),
            budget_micros=2**63 - 1,
            rpm_limit=60,
            tpm_limit=2**40,
            expires_at=_T0 + timedelta(days=30, microseconds=123),
            metadata={"env": "prod", "ünï": "cødé"},
            previous_digest=_digest("old"),
            previous_valid_until=_T0 + timedelta(hours=1),
            rotation_counter=3,
            rotation_idempotency_digest=_digest("idem"),
            version=7,
        )
        await store.insert(record)
        assert await store.get(record.id) == record
        assert await store.get("key_missing") is None

    async def test_find_by_current_and_previous_digest(self, store: ApiKeyStore) -> None:
        record = make_record(previous_digest=_digest("previous"), previous_valid_until=_T0)
        await store.insert(record)
        assert await store.find_by_digest(record.digest) == record
        assert await store.find_by_digest(_digest("previous")) == record
        assert await store.find_by_digest(_digest("nobody")) is None

    async def test_duplicate_id_or_digest_is_a_conflict_and_writes_nothing(self, store: ApiKeyStore) -> None:
        first = make_record()
        await store.insert(first)
        with pytest.raises(ConflictError) as info:
            await store.insert(make_record(id=first.id))
        assert info.value.code == "api_key.conflict"
        same_digest = make_record(digest=first.digest)
        with pytest.raises(ConflictError):
            await store.insert(same_digest)
        assert await store.get(same_digest.id) is None
        assert await store.get(first.id) == first

    async def test_update_is_compare_and_set_on_version(self, store: ApiKeyStore) -> None:
        record = make_record()
        await store.insert(record)
        changed = attrs.evolve(record, name="renamed", version=2, revoked_at=_T0)
        assert await store.update(changed, expected_version=1) is True
        assert await store.get(record.id) == changed
        stale = attrs.evolve(record, name="stale", version=2)
        assert await store.update(stale, expected_version=1) is False
        assert await store.get(record.id) == changed
        assert await store.update(make_record(), expected_version=1) is False

    async def test_update_moves_the_digest_index(self, store: ApiKeyStore) -> None:
        record = make_record()
        await store.insert(record)
        rotated = attrs.evolve(
            record,
            digest=_digest("new-secret"),
            previous_digest=record.digest,
            previous_valid_until=_T0,
            version=2,
        )
        assert await store.update(rotated, expected_version=1)
        assert await store.find_by_digest(_digest("new-secret")) == rotated
        assert await store.find_by_digest(record.digest) == rotated
        dropped = attrs.evolve(
            rotated, digest=_digest("newer"), previous_digest=None, previous_valid_until=None, version=3
        )
        assert await store.update(dropped, expected_version=2)
        assert await store.find_by_digest(record.digest) is None
        assert await store.find_by_digest(_digest("new-secret")) is None
        assert await store.find_by_digest(_digest("newer")) == dropped

    async def test_concurrent_updates_with_one_version_let_exactly_one_win(self, store: ApiKeyStore) -> None:
        record = make_record()
        await store.insert(record)
        attempts = [attrs.evolve(record, name=f"writer {i}", version=2) for i in range(8)]
        results = await asyncio.gather(*(store.update(a, expected_version=1) for a in attempts))
        assert sum(results) == 1
        winner = attempts[results.index(True)]
        assert await store.get(record.id) == winner

    async def test_list_filters_and_orders(self, store: ApiKeyStore) -> None:
        a = make_record(owner_id="alice", team_id="t1")
        b = make_record(owner_id="bob", team_id="t1")
        c = make_record(owner_id="alice", team_id=None, revoked_at=_T0)
        d = make_record(owner_id="alice", team_id="t2")
        for record in (d, c, b, a):
            await store.insert(record)
        assert [r.id for r in await store.list()] == [a.id, b.id, d.id]
        assert [r.id for r in await store.list(include_revoked=True)] == [a.id, b.id, c.id, d.id]
        assert [r.id for r in await store.list(owner_id="alice")] == [a.id, d.id]
        assert [r.id for r in await store.list(owner_id="alice", include_revoked=True)] == [a.id, c.id, d.id]
        assert [r.id for r in await store.list(team_id="t1")] == [a.id, b.id]
        assert [r.id for r in await store.list(owner_id="bob", team_id="t2")] == []

    async def test_hostile_text_is_stored_verbatim(self, store: ApiKeyStore) -> None:
        record = make_record(
            owner_id="x'; DROP TABLE maaskit_api_keys; --",
            name='Robert"); --',
            allowed_models=frozenset({"../etc/passwd", "https://evil.example/v1"}),
        )
        await store.insert(record)
        assert await store.get(record.id) == record
        assert [r.id for r in await store.list(owner_id=record.owner_id)] == [record.id]

    async def test_ping(self, store: ApiKeyStore) -> None:
        await store.ping()

"""SecretService: AES-256-GCM envelopes, names bound as associated data, tampering, KDFs, rotation."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator

import pytest
import structlog

from maaskit.errors import InternalError, MaasError, NotFoundError, UnavailableError, ValidationError
from maaskit.services.secrets import (
    KDF_ARGON2ID,
    KDF_HKDF,
    KDF_PBKDF2,
    DefaultSecretService,
    MasterKey,
    SecretService,
    aes_gcm_decrypt,
    aes_gcm_encrypt,
)
from maaskit.storage.memory.secrets import MemorySecretStore
from maaskit.storage.ports.secrets import SecretRecord, SecretStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.secrets import SqlSecretStore
from maaskit.testing.clock import FakeClock

PLAINTEXT = b"sk-canary-0123456789abcdef"


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.random(key_id="k1")


@pytest.fixture
def store() -> MemorySecretStore:
    return MemorySecretStore()


@pytest.fixture
def svc(store: MemorySecretStore, master: MasterKey, clock: FakeClock) -> DefaultSecretService:
    return DefaultSecretService(store, master, clock=clock)


def test_protocols(svc: DefaultSecretService, store: MemorySecretStore) -> None:
    assert isinstance(svc, SecretService)
    assert isinstance(store, SecretStore)


async def test_round_trip_bytes_and_text(
    svc: DefaultSecretService, store: MemorySecretStore, clock: FakeClock
) -> None:
    await svc.store("upstream/openai", PLAINTEXT)
    await svc.store("text", "päss wörd ✓")
    await svc.store("empty", b"")
    assert await svc.retrieve("upstream/openai") == PLAINTEXT
    assert await svc.retrieve("text") == "päss wörd ✓".encode()
    assert await svc.retrieve("empty") == b""
    assert await svc.list_names() == ["empty", "text", "upstream/openai"]
    record = await store.get("upstream/openai")
    assert record is not None
    assert record.key_id == "k1"
    assert record.updated_at == clock.now()
    assert PLAINTEXT not in record.envelope
    assert PLAINTEXT.hex() not in repr(record)


async def test_overwrite_and_delete(svc: DefaultSecretService) -> None:
    await svc.store("a", b"one")
    await svc.store("a", b"two")
    assert await svc.retrieve("a") == b"two"
    assert await svc.delete("a") is True
    assert await svc.delete("a") is False
    with pytest.raises(NotFoundError) as info:
        await svc.retrieve("a")
    assert info.value.code == "secret.not_found"


async def test_each_write_uses_a_fresh_nonce(svc: DefaultSecretService, store: MemorySecretStore) -> None:
    nonces = set()
    for _ in range(50):
        await svc.store("same", PLAINTEXT)
        record = await store.get("same")
        assert record is not None
        nonces.add(record.envelope[-(12 + 16 + len(PLAINTEXT)) : -(16 + len(PLAINTEXT))])
    assert len(nonces) == 50


async def test_envelope_layout(svc: DefaultSecretService, store: MemorySecretStore) -> None:
    await svc.store("n", PLAINTEXT)
    record = await store.get("n")
    assert record is not None
    env = record.envelope
    version, kdf, kid_len = struct.unpack_from(">BBB", env)
    assert (version, kdf, kid_len) == (1, KDF_HKDF, 2)
    assert env[3:5] == b"k1"
    assert struct.unpack_from(">H", env, 5) == (0,)
    assert len(env) == 7 + 12 + len(PLAINTEXT) + 16


# -- integrity ---------------------------------------------------------------------------------


async def test_swapped_ciphertexts_fail(svc: DefaultSecretService, store: MemorySecretStore) -> None:
    await svc.store("alice", b"alice-secret")
    await svc.store("bob", b"bob-secret!!")
    a, b = await store.get("alice"), await store.get("bob")
    assert a is not None
    assert b is not None
    await store.put(SecretRecord(name="alice", envelope=b.envelope, key_id=b.key_id, updated_at=b.updated_at))
    with pytest.raises(InternalError) as info:
        await svc.retrieve("alice")
    assert info.value.code == "secret.integrity"
    assert "bob-secret" not in str(info.value) + repr(info.value)


async def test_every_flipped_bit_fails(svc: DefaultSecretService, store: MemorySecretStore) -> None:
    await svc.store("n", PLAINTEXT)
    record = await store.get("n")
    assert record is not None
    for i in range(len(record.envelope)):
        for bit in (0x01, 0x80):
            tampered = bytearray(record.envelope)
            tampered[i] ^= bit
            await store.put(
                SecretRecord(name="n", envelope=bytes(tampered), key_id="k1", updated_at=record.updated_at)
            )
            with pytest.raises(MaasError) as info:
                await svc.retrieve("n")
            assert info.value.code in ("secret.integrity", "secret.unknown_key"), (i, bit)


async def test_every_truncation_fails(svc: DefaultSecretService, store: MemorySecretStore) -> None:
    await svc.store("n", PLAINTEXT)
    record = await store.get("n")
    assert record is not None
    for length in range(len(record.envelope)):
        await store.put(
            SecretRecord(
                name="n", envelope=record.envelope[:length], key_id="k1", updated_at=record.updated_at
            )
        )
        with pytest.raises(InternalError) as info:
            await svc.retrieve("n")
        assert info.value.code == "secret.integrity", length
    await store.put(
        SecretRecord(name="n", envelope=record.envelope + b"\x00", key_id="k1", updated_at=record.updated_at)
    )
    with pytest.raises(InternalError):
        await svc.retrieve("n")


async def test_header_relabelled_to_another_known_key_fails(
    store: MemorySecretStore, clock: FakeClock
) -> None:
    k1, k2 = MasterKey.random(key_id="k1"), MasterKey.random(key_id="k2")
    svc = DefaultSecretService(store, k1, previous_keys=[k2], clock=clock)
    await svc.store("n", PLAINTEXT)
    record = await store.get("n")
    assert record is not None
    relabelled = record.envelope.replace(b"k1", b"k2", 1)
    await store.put(SecretRecord(name="n", envelope=relabelled, key_id="k2", updated_at=record.updated_at))
    with pytest.raises(InternalError) as info:
        await svc.retrieve("n")
    assert info.value.code == "secret.integrity"


async def test_wrong_master_key(store: MemorySecretStore, clock: FakeClock) -> None:
    await DefaultSecretService(store, MasterKey.random(key_id="k1"), clock=clock).store("n", PLAINTEXT)
    impostor = DefaultSecretService(store, MasterKey.random(key_id="k1"), clock=clock)
    with pytest.raises(InternalError) as info:
        await impostor.retrieve("n")
    assert info.value.code == "secret.integrity"
    other = DefaultSecretService(store, MasterKey.random(key_id="k9"), clock=clock)
    with pytest.raises(InternalError) as info:
        await other.retrieve("n")
    assert info.value.code == "secret.unknown_key"
    assert info.value.params == {"key_id": "k1"}


async def test_no_plaintext_in_logs(svc: DefaultSecretService, store: MemorySecretStore) -> None:
    with structlog.testing.capture_logs() as logs:
        await svc.store("n", PLAINTEXT)
        await svc.retrieve("n")
        record = await store.get("n")
        assert record is not None
        await store.put(
            SecretRecord(name="n", envelope=record.envelope[:-1], key_id="k1", updated_at=record.updated_at)
        )
        with pytest.raises(InternalError):
            await svc.retrieve("n")
    text = repr(logs)
    assert PLAINTEXT.decode() not in text
    assert record.envelope.hex() not in text
    assert any(entry["event"] == "secret_unreadable" for entry in logs)


# -- input validation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "x" * 257, "a\x00b", "line\nbreak", "\ud800", 5, None])
async def test_bad_names(svc: DefaultSecretService, name: object) -> None:
    with pytest.raises(ValidationError) as info:
        await svc.store(name, b"v")  # type: ignore[arg-type]
    assert info.value.code == "secret.invalid_name"


async def test_bad_values(store: MemorySecretStore, master: MasterKey) -> None:
    svc = DefaultSecretService(store, master, max_secret_bytes=10)
    with pytest.raises(ValidationError) as info:
        await svc.store("n", b"x" * 11)
    assert info.value.code == "secret.too_large"
    with pytest.raises(ValidationError):
        await svc.store("n", 12)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await svc.store("n", "\ud800")
    assert await svc.list_names() == []


# -- master keys -------------------------------------------------------------------------------


def test_master_key_never_shows_material() -> None:
    raw = os.urandom(32)
    key = MasterKey.from_bytes(raw, key_id="prod-1")
    for text in (repr(key), str(key)):
        assert raw.hex() not in text
        assert "prod-1" in text


@pytest.mark.parametrize("raw", [b"", os.urandom(16), os.urandom(31), b"\x00" * 32, b"ab" * 16])
def test_weak_raw_master_keys(raw: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        MasterKey.from_bytes(raw, key_id="k")
    assert info.value.code == "secret.weak_master_key"


def test_bad_key_ids() -> None:
    for key_id in ("", "x" * 65, "has space", "slash/"):
        with pytest.raises(ValidationError):
            MasterKey.random(key_id=key_id)


def test_passphrase_argon2id() -> None:
    salt = os.urandom(16)
    a = MasterKey.from_passphrase(
        "correct horse battery", salt=salt, key_id="p1", time_cost=2, memory_cost=19456, parallelism=1
    )
    b = MasterKey.from_passphrase(
        "correct horse battery", salt=salt, key_id="p1", time_cost=2, memory_cost=19456, parallelism=1
    )
    c = MasterKey.from_passphrase(
        "correct horse battery",
        salt=os.urandom(16),
        key_id="p1",
        time_cost=2,
        memory_cost=19456,
        parallelism=1,
    )
    assert a.kdf_id == KDF_ARGON2ID
    assert a.kdf_params == struct.pack(">IIB", 2, 19456, 1) + salt
    assert a.same_key(b)
    assert not a.same_key(c)


def test_passphrase_pbkdf2_at_600k() -> None:
    salt = os.urandom(16)
    key = MasterKey.from_passphrase("correct horse battery", salt=salt, key_id="p1", kdf="pbkdf2")
    assert key.kdf_id == KDF_PBKDF2
    assert key.kdf_params == struct.pack(">I", 600_000) + salt


@pytest.mark.parametrize(
    "kwargs",
    [
        {"passphrase": "short"},
        {"salt": b"tiny"},
        {"kdf": "pbkdf2", "iterations": 1000},
        {"kdf": "pbkdf2", "iterations": 599_999},
        {"time_cost": 1},
        {"memory_cost": 1024},
    ],
)
def test_weak_passphrase_settings(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"passphrase": "correct horse battery", "salt": os.urandom(16), "key_id": "p"}
    args.update(kwargs)
    with pytest.raises(ValidationError) as info:
        MasterKey.from_passphrase(**args)  # type: ignore[arg-type]
    assert info.value.code == "secret.weak_master_key"


async def test_passphrase_key_round_trip(store: MemorySecretStore) -> None:
    key = MasterKey.from_passphrase(
        "correct horse battery",
        salt=os.urandom(16),
        key_id="p1",
        time_cost=2,
        memory_cost=19456,
        parallelism=1,
    )
    svc = DefaultSecretService(store, key)
    await svc.store("n", PLAINTEXT)
    assert await svc.retrieve("n") == PLAINTEXT
    record = await store.get("n")
    assert record is not None
    assert record.envelope[1] == KDF_ARGON2ID


def test_primitive_checks_sizes() -> None:
    with pytest.raises(ValidationError):
        aes_gcm_encrypt(b"k" * 16, b"n" * 12, b"p", b"")
    with pytest.raises(ValidationError):
        aes_gcm_decrypt(b"k" * 32, b"n" * 8, b"c" * 32, b"")
    with pytest.raises(InternalError):
        aes_gcm_decrypt(os.urandom(32), b"n" * 12, b"short", b"")


# -- rotation ----------------------------------------------------------------------------------


async def test_rotation_re_encrypts_everything(store: MemorySecretStore, clock: FakeClock) -> None:
    old, new = MasterKey.random(key_id="2025"), MasterKey.random(key_id="2026")
    svc = DefaultSecretService(store, old, clock=clock)
    for i in range(25):
        await svc.store(f"s{i:02d}", f"value-{i}")
    report = await svc.rotate_master_key(new, batch_size=7)
    assert (report.key_id, report.rotated, report.remaining) == ("2026", 25, 0)
    assert svc.key_id == "2026"
    assert {(await store.get(n)).key_id for n in await store.list_names()} == {"2026"}  # type: ignore[union-attr]
    # Only the new key is needed afterwards.
    fresh = DefaultSecretService(store, new)
    assert await fresh.retrieve("s13") == b"value-13"
    # Rerunning is a no-op.
    assert (await svc.rotate_master_key(new)).rotated == 0


class FlakyStore(MemorySecretStore):
    """Dies (like a crash) after a number of successful compare-and-set writes."""

    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    async def replace_if(self, name: str, expected_envelope: bytes, record: SecretRecord) -> bool:
        if self.fail_after <= 0:
            raise UnavailableError("database.unavailable")
        self.fail_after -= 1
        return await super().replace_if(name, expected_envelope, record)


async def test_interrupted_rotation_can_be_rerun(clock: FakeClock) -> None:
    store = FlakyStore(fail_after=10**9)
    old, new = MasterKey.random(key_id="old"), MasterKey.random(key_id="new")
    svc = DefaultSecretService(store, old, clock=clock)
    for i in range(12):
        await svc.store(f"s{i:02d}", f"value-{i}")
    store.fail_after = 5
    with pytest.raises(UnavailableError):
        await svc.rotate_master_key(new, batch_size=4)
    # Mid-rotation: rows are under both keys, and every one is readable with both keys known.
    key_ids = [(await store.get(n)).key_id for n in await store.list_names()]  # type: ignore[union-attr]
    assert key_ids.count("new") == 5
    assert key_ids.count("old") == 7
    restarted = DefaultSecretService(store, new, previous_keys=[old], clock=clock)
    for i in range(12):
        assert await restarted.retrieve(f"s{i:02d}") == f"value-{i}".encode()
    store.fail_after = 10**9
    report = await restarted.rotate_master_key(new)
    assert (report.rotated, report.remaining) == (7, 0)
    assert await DefaultSecretService(store, new).retrieve("s00") == b"value-0"


async def test_rotation_refuses_conflicting_key_ids(store: MemorySecretStore) -> None:
    svc = DefaultSecretService(store, MasterKey.random(key_id="k1"))
    with pytest.raises(ValidationError) as info:
        await svc.rotate_master_key(MasterKey.random(key_id="k1"))
    assert info.value.code == "secret.key_id_conflict"
    with pytest.raises(ValidationError):
        DefaultSecretService(
            store, MasterKey.random(key_id="k1"), previous_keys=[MasterKey.random(key_id="k1")]
        )
    with pytest.raises(ValidationError):
        await svc.rotate_master_key(MasterKey.random(key_id="k2"), batch_size=0)


async def test_rotation_stops_at_an_unreadable_row(store: MemorySecretStore, clock: FakeClock) -> None:
    old = MasterKey.random(key_id="old")
    svc = DefaultSecretService(store, old, clock=clock)
    await svc.store("good", b"1")
    await store.put(
        SecretRecord(name="bad", envelope=b"\x01garbage" * 5, key_id="old", updated_at=clock.now())
    )
    with pytest.raises(InternalError):
        await svc.rotate_master_key(MasterKey.random(key_id="new"))
    assert (await store.get("bad")) is not None  # nothing deleted


# -- SQL store ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return "sqlite+aiosqlite:///:memory:"


@pytest.fixture
async def sql_store(db_url: str) -> AsyncIterator[SqlSecretStore]:
    db = Database(db_url)
    await db.migrate()
    yield SqlSecretStore(db)
    await db.downgrade("base")
    await db.aclose()


async def test_sql_store_round_trip_and_rotation(sql_store: SqlSecretStore, clock: FakeClock) -> None:
    old, new = MasterKey.random(key_id="old"), MasterKey.random(key_id="new")
    svc = DefaultSecretService(sql_store, old, clock=clock)
    await svc.store("a", PLAINTEXT)
    await svc.store("b", "zwei")
    await svc.store("a", b"overwritten")
    assert await svc.retrieve("a") == b"overwritten"
    assert await svc.list_names() == ["a", "b"]
    assert await sql_store.names_not_under("new", 10) == ["a", "b"]
    report = await svc.rotate_master_key(new)
    assert (report.rotated, report.remaining) == (2, 0)
    assert await DefaultSecretService(sql_store, new).retrieve("b") == b"zwei"
    record = await sql_store.get("a")
    assert record is not None
    assert await sql_store.replace_if("a", b"stale", record) is False
    assert await svc.delete("b") is True
    assert await svc.delete("b") is False
    await svc.ping()

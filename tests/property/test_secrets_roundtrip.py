"""Property tests: any bytes under any valid name round-trip; any change to an envelope is refused."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maaskit.errors import InternalError, MaasError
from maaskit.services.secrets import DefaultSecretService, MasterKey
from maaskit.storage.memory.secrets import MemorySecretStore
from maaskit.storage.ports.secrets import SecretRecord

MASTER = MasterKey.random(key_id="prop")
OTHER = MasterKey.random(key_id="prop-2")

names = st.text(min_size=1, max_size=256).filter(
    lambda s: not any(unicodedata.category(c) in ("Cc", "Cs") for c in s)
)


@settings(max_examples=300, deadline=None)
@given(name=names, value=st.binary(max_size=4096))
async def test_any_bytes_any_name_round_trip(name: str, value: bytes) -> None:
    svc = DefaultSecretService(MemorySecretStore(), MASTER)
    await svc.store(name, value)
    assert await svc.retrieve(name) == value
    assert await svc.list_names() == [name]


@settings(max_examples=200, deadline=None)
@given(name=names, value=st.text(max_size=500))
async def test_text_round_trips_as_utf8(name: str, value: str) -> None:
    try:
        expected = value.encode("utf-8")
    except UnicodeEncodeError:
        return
    svc = DefaultSecretService(MemorySecretStore(), MASTER)
    await svc.store(name, value)
    assert await svc.retrieve(name) == expected


@settings(max_examples=200, deadline=None)
@given(a=names, b=names, va=st.binary(max_size=64), vb=st.binary(max_size=64))
async def test_envelopes_never_open_under_another_name(a: str, b: str, va: bytes, vb: bytes) -> None:
    if a == b:
        return
    store = MemorySecretStore()
    svc = DefaultSecretService(store, MASTER)
    await svc.store(a, va)
    record = await store.get(a)
    assert record is not None
    await store.put(
        SecretRecord(name=b, envelope=record.envelope, key_id=record.key_id, updated_at=record.updated_at)
    )
    with pytest.raises(InternalError) as info:
        await svc.retrieve(b)
    assert info.value.code == "secret.integrity"


@settings(max_examples=300, deadline=None)
@given(value=st.binary(min_size=0, max_size=128), data=st.data())
async def test_any_mutation_is_detected(value: bytes, data: st.DataObject) -> None:
    store = MemorySecretStore()
    svc = DefaultSecretService(store, MASTER, previous_keys=[OTHER])
    await svc.store("n", value)
    record = await store.get("n")
    assert record is not None
    env = bytearray(record.envelope)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(env) - 1))
        env[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        env = env[: data.draw(st.integers(0, len(env) - 1))]
    else:
        env += data.draw(st.binary(min_size=1, max_size=8))
    await store.put(SecretRecord(name="n", envelope=bytes(env), key_id="prop", updated_at=record.updated_at))
    with pytest.raises(MaasError) as info:
        await svc.retrieve("n")
    assert info.value.code in ("secret.integrity", "secret.unknown_key")

"""CredentialPool: strategies, model map, cooldown with Retry-After, auto-disable, stats, secrets."""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta

import pytest

from maaskit.errors import NotFoundError, UnavailableError, ValidationError
from maaskit.services.credentials import (
    CredentialKind,
    CredentialPool,
    DefaultCredentialPool,
    Strategy,
    smooth_weighted_schedule,
)
from maaskit.services.secrets import DefaultSecretService, MasterKey
from maaskit.storage.memory.credentials import MemoryCredentialStore
from maaskit.storage.memory.secrets import MemorySecretStore
from maaskit.testing.clock import FakeClock

SECRET = "sk-live-very-secret-0123456789"


async def make_pool(clock: FakeClock, **kwargs: object) -> DefaultCredentialPool:
    pool = DefaultCredentialPool(MemoryCredentialStore(), clock=clock, **kwargs)  # type: ignore[arg-type]
    await pool.load()
    return pool


async def test_protocol_and_default_header(clock: FakeClock) -> None:
    pool = await make_pool(clock)
    assert isinstance(pool, CredentialPool)
    cred = await pool.add("openai", SECRET, name="main")
    lease = pool.acquire("gpt-4o")
    assert (lease.header_name, lease.header_value) == ("Authorization", f"Bearer {SECRET}")
    assert lease.upstream_model == "gpt-4o"
    assert not lease.mapped
    assert lease.credential_id == cred.id
    assert lease.upstream == "openai"
    lease.release(200)
    cookie = await pool.add("sg", "abc123", kind="cookie", header_format="sgs={secret}")
    assert cookie.kind is CredentialKind.COOKIE
    lease = pool.acquire("m", upstream="sg")
    assert (lease.header_name, lease.header_value) == ("Cookie", "sgs=abc123")
    lease.release()


async def test_secret_never_in_reprs_or_errors(clock: FakeClock) -> None:
    pool = await make_pool(clock)
    cred = await pool.add("openai", SECRET)
    lease = pool.acquire("m")
    for text in (repr(pool), repr(cred), repr(lease), repr(pool.stats()), repr(pool.list())):
        assert SECRET not in text
    with pytest.raises(ValidationError) as info:
        await pool.add("openai", SECRET + "\n")
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.params)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"secret": ""}, "secret"),
        ({"secret": "a\r\nX-Evil: 1"}, "secret"),
        ({"header": "Host"}, "header"),
        ({"header": "X Bad"}, "header"),
        ({"header_format": "Bearer"}, "format"),
        ({"header_format": "{secret}{secret}"}, "format"),
        ({"weight": 0}, "weight"),
        ({"weight": 1001}, "weight"),
        ({"weight": True}, "weight"),
        ({"models": "gpt-4o"}, "models"),
        ({"models": []}, "models"),
        ({"kind": "password"}, "kind"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    clock: FakeClock, kwargs: dict[str, object], reason: str
) -> None:
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, clock=clock)
    await pool.load()
    args: dict[str, object] = {"secret": SECRET, **kwargs}
    secret = args.pop("secret")
    with pytest.raises(ValidationError) as info:
        await pool.add("openai", secret, **args)  # type: ignore[arg-type]
    assert info.value.code == "credentials.invalid"
    assert reason in info.value.params["reason"]
    assert await store.list() == []
    assert pool.list() == []


def test_bad_config() -> None:
    store = MemoryCredentialStore()
    for kwargs in (
        {"strategy": "random"},
        {"model_map": {"gpt-4o": {}}},
        {"model_map": {"gpt-4o": {"u": ""}}},
        {"disable_after": -1},
        {"max_cooldown": float("nan")},
        {"flush_interval": 0},
    ):
        with pytest.raises(ValidationError) as info:
            DefaultCredentialPool(store, **kwargs)  # type: ignore[arg-type]
        assert info.value.code == "credentials.invalid_config"


async def test_not_loaded(clock: FakeClock) -> None:
    pool = DefaultCredentialPool(MemoryCredentialStore(), clock=clock)
    with pytest.raises(UnavailableError) as info:
        pool.acquire("m")
    assert info.value.code == "credentials.not_loaded"


async def test_round_robin_is_fair(clock: FakeClock) -> None:
    pool = await make_pool(clock, strategy="round_robin")
    ids = [(await pool.add("u", f"k{i}")).id for i in range(4)]
    picks = []
    for _ in range(40):
        lease = pool.acquire("m")
        picks.append(lease.credential_id)
        lease.release(200)
    assert Counter(picks) == dict.fromkeys(ids, 10)
    assert picks[:4] == ids  # in order


async def test_least_used_prefers_fewest_in_flight(clock: FakeClock) -> None:
    pool = await make_pool(clock, strategy=Strategy.LEAST_USED)
    ids = [(await pool.add("u", f"k{i}")).id for i in range(3)]
    a, b, c = (pool.acquire("m") for _ in range(3))
    assert {a.credential_id, b.credential_id, c.credential_id} == set(ids)
    b.release(200)
    d = pool.acquire("m")
    assert d.credential_id == b.credential_id  # the only one with nothing in flight
    a.release(200)
    c.release(200)
    # all idle now: the one used longest ago wins
    e = pool.acquire("m")
    assert e.credential_id == a.credential_id


async def test_weighted_is_smooth_and_exact(clock: FakeClock) -> None:
    pool = await make_pool(clock, strategy=Strategy.WEIGHTED)
    a = await pool.add("u", "ka", weight=5)
    b = await pool.add("u", "kb", weight=1)
    c = await pool.add("u", "kc", weight=1)
    picks = []
    for _ in range(7):
        lease = pool.acquire("m")
        picks.append(lease.credential_id)
        lease.release(200)
    # nginx's example: weights {5, 1, 1} -> a a b a c a a
    assert picks == [a.id, a.id, b.id, a.id, c.id, a.id, a.id]


def test_smooth_schedule_known_sequence() -> None:
    assert smooth_weighted_schedule([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]
    assert smooth_weighted_schedule([]) == []


async def test_model_map_and_restrictions(clock: FakeClock) -> None:
    pool = await make_pool(
        clock, model_map={"gpt-4o": {"azure-eu": "gpt4o-prod", "openai": "gpt-4o-2024-08-06"}}
    )
    azure = await pool.add("azure-eu", "k-azure")
    openai = await pool.add("openai", "k-openai")
    other = await pool.add("anthropic", "k-anth")
    special = await pool.add("openai", "k-special", models=["o1"])
    seen = {}
    for _ in range(4):
        lease = pool.acquire("gpt-4o")
        seen[lease.credential_id] = lease.upstream_model
        assert lease.mapped
        lease.release()
    assert seen == {azure.id: "gpt4o-prod", openai.id: "gpt-4o-2024-08-06"}
    assert other.id not in seen
    assert special.id not in seen
    lease = pool.acquire("gpt-4o", upstream="azure-eu")
    assert (lease.credential_id, lease.upstream_model) == (azure.id, "gpt4o-prod")
    lease.release()
    # a model restricted credential serves only its model; unmapped models pass through
    lease = pool.acquire("o1", upstream="openai")
    assert lease.credential_id in {openai.id, special.id}
    assert lease.upstream_model == "o1"
    lease.release()
    assert pool.resolve("gpt-4o", upstream="openai") == (pool.get(openai.id), "gpt-4o-2024-08-06")
    assert pool.upstream_model("gpt-4o", "azure-eu") == "gpt4o-prod"
    assert pool.upstream_model("unknown", "azure-eu") == "unknown"
    with pytest.raises(NotFoundError) as info:
        pool.acquire("gpt-4o", upstream="anthropic")
    assert info.value.code == "credentials.model_not_served"
    # a credential-id entry wins over its upstream's
    pool.set_model_map({"gpt-4o": {"openai": "gpt-4o", openai.id: "gpt-4o-mini"}})
    lease = pool.acquire("gpt-4o", upstream="openai")
    assert lease.upstream_model == "gpt-4o-mini"
    lease.release()


async def test_strict_map_refuses_unknown_models(clock: FakeClock) -> None:
    pool = await make_pool(clock, passthrough=False, model_map={"a": {"u": "a1"}})
    await pool.add("u", "k")
    pool.acquire("a").release()
    with pytest.raises(NotFoundError):
        pool.acquire("b")


async def test_cooldown_honours_retry_after_then_exhausted(clock: FakeClock) -> None:
    pool = await make_pool(clock)
    a = await pool.add("u", "ka")
    b = await pool.add("u", "kb")
    lease = pool.acquire("m")
    assert lease.credential_id == a.id
    lease.release(429, retry_after=12.5)
    # only b is handed out while a cools down
    for _ in range(3):
        lease = pool.acquire("m")
        assert lease.credential_id == b.id
        lease.release(200)
    lease = pool.acquire("m")
    lease.release(401, retry_after=30)
    with pytest.raises(UnavailableError) as info:
        pool.acquire("m")
    assert info.value.code == "credentials.exhausted"
    assert info.value.params["retry_after"] == 12.5  # the earliest cooldown end
    clock.advance(seconds=12.5)
    lease = pool.acquire("m")
    assert lease.credential_id == a.id
    lease.release(200)
    stats = {s.credential_id: s for s in pool.stats()}
    assert stats[b.id].cooldown_until == clock.now() + timedelta(seconds=17.5)
    assert not stats[b.id].available
    assert stats[a.id].available
    assert stats[a.id].failures == {429: 1}
    assert stats[b.id].failures == {401: 1}


async def test_cooldown_defaults_and_cap(clock: FakeClock) -> None:
    pool = await make_pool(clock, auth_cooldown=100, rate_limit_cooldown=7, max_cooldown=60)
    await pool.add("u", "k")
    pool.acquire("m").release(429)
    with pytest.raises(UnavailableError) as info:
        pool.acquire("m")
    assert info.value.params["retry_after"] == 7
    clock.advance(seconds=7)
    pool.acquire("m").release(403)
    with pytest.raises(UnavailableError) as info:
        pool.acquire("m")
    assert info.value.params["retry_after"] == 60  # capped
    clock.advance(seconds=60)
    pool.acquire("m").release(429, retry_after=1e9)
    with pytest.raises(UnavailableError) as info:
        pool.acquire("m")
    assert info.value.params["retry_after"] == 60


async def test_server_errors_count_but_do_not_cool_down(clock: FakeClock) -> None:
    pool = await make_pool(clock, disable_after=1)
    cred = await pool.add("u", "k")
    for status in (500, 502, 0, 404):
        pool.acquire("m").release(status)
    (stats,) = pool.stats()
    assert stats.available
    assert stats.enabled
    assert stats.failures == {500: 1, 502: 1, 0: 1, 404: 1}
    assert stats.requests == 4
    assert stats.successes == 0
    assert pool.acquire("m").credential_id == cred.id


async def test_disable_after_consecutive_auth_failures_and_reenable(clock: FakeClock) -> None:
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, clock=clock, disable_after=3, auth_cooldown=1)
    await pool.load()
    cred = await pool.add("u", "k")
    for _i in range(2):
        pool.acquire("m").release(401)
        clock.advance(seconds=1)
    pool.acquire("m").release(200)  # a success resets the count
    for _i in range(3):
        pool.acquire("m").release(403)
        clock.advance(seconds=1)
    (stats,) = pool.stats()
    assert not stats.enabled
    assert stats.disabled_reason == "failures"
    assert stats.consecutive_failures == 3
    with pytest.raises(UnavailableError) as info:
        pool.acquire("m")
    assert info.value.code == "credentials.disabled"
    clock.advance(seconds=3600)
    with pytest.raises(UnavailableError):
        pool.acquire("m")  # stays disabled, whatever the time
    await pool.flush()
    stored = await store.get(cred.id)
    assert stored is not None
    assert stored.enabled is False
    assert stored.disabled_reason == "failures"
    await pool.enable(cred.id)
    stored = await store.get(cred.id)
    assert stored is not None
    assert stored.enabled
    lease = pool.acquire("m")
    assert lease.credential_id == cred.id
    lease.release(200)
    assert pool.stats()[0].consecutive_failures == 0


async def test_manual_disable_update_remove(clock: FakeClock) -> None:
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, clock=clock)
    await pool.load()
    a = await pool.add("u", "ka")
    b = await pool.add("u", "kb")
    await pool.disable(a.id)
    assert all(pool.acquire("m").credential_id == b.id for _ in range(3))
    updated = await pool.update(b.id, name="renamed", weight=7, models=["x"])
    assert (updated.name, updated.weight, updated.models) == ("renamed", 7, ("x",))
    with pytest.raises(UnavailableError):
        pool.acquire("m")  # a disabled; b now serves only "x"
    assert await pool.remove(a.id)
    assert not await pool.remove(a.id)
    assert [c.id for c in pool.list()] == [b.id]
    assert await store.get(a.id) is None
    with pytest.raises(NotFoundError) as info:
        await pool.enable(a.id)
    assert info.value.code == "credentials.not_found"


async def test_exclude_moves_to_another_credential(clock: FakeClock) -> None:
    pool = await make_pool(clock)
    a = await pool.add("u", "ka")
    b = await pool.add("u", "kb")
    for _ in range(4):
        assert pool.acquire("m", exclude=[a.id]).credential_id == b.id
    with pytest.raises(UnavailableError):
        pool.acquire("m", exclude=[a.id, b.id])


async def test_lease_release_is_idempotent_and_counts(clock: FakeClock) -> None:
    pool = await make_pool(clock)
    await pool.add("u", "k")
    lease = pool.acquire("m")
    assert pool.stats()[0].in_flight == 1
    with lease:
        lease.report_success(tokens=42)
        lease.report_failure(500)  # ignored: already reported
    lease.release(500)
    (stats,) = pool.stats()
    assert (stats.in_flight, stats.successes, stats.tokens, stats.failures) == (0, 1, 42, {})
    assert stats.last_used_at == clock.now()


async def test_secrets_go_through_the_secret_service(clock: FakeClock) -> None:
    secret_store = MemorySecretStore()
    secrets = DefaultSecretService(secret_store, MasterKey(os.urandom(32), key_id="k1"), clock=clock)
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, secrets=secrets, clock=clock)
    await pool.load()
    cred = await pool.add("u", SECRET)
    (record,) = await store.list()
    assert record.secret_ref == f"credential/{cred.id}"
    assert SECRET not in repr(record)
    envelope = (await secret_store.get(record.secret_ref)).envelope  # type: ignore[union-attr]
    assert SECRET.encode() not in envelope
    # a fresh pool over the same stores finds the secret again
    again = DefaultCredentialPool(store, secrets=secrets, clock=clock)
    await again.load()
    assert again.acquire("m").header_value == f"Bearer {SECRET}"
    await again.rotate_secret(cred.id, "sk-new-one")
    assert (await secrets.retrieve(record.secret_ref)) == b"sk-new-one"
    assert again.acquire("m").header_value == "Bearer sk-new-one"
    assert await again.remove(cred.id)
    assert await secret_store.get(record.secret_ref) is None


async def test_without_secret_service_secrets_are_lost_on_restart(clock: FakeClock) -> None:
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, clock=clock)
    await pool.load()
    await pool.add("u", SECRET)
    fresh = DefaultCredentialPool(store, clock=clock)
    await fresh.load()
    (cred,) = fresh.list()
    assert not cred.enabled
    assert cred.disabled_reason == "secret_missing"
    with pytest.raises(UnavailableError) as info:
        fresh.acquire("m")
    assert info.value.code == "credentials.disabled"


async def test_failed_insert_leaves_no_secret(clock: FakeClock) -> None:
    class Broken(MemoryCredentialStore):
        async def insert(self, record: object) -> None:  # type: ignore[override]
            raise OSError("disk full")

    secret_store = MemorySecretStore()
    secrets = DefaultSecretService(secret_store, MasterKey(os.urandom(32), key_id="k1"), clock=clock)
    pool = DefaultCredentialPool(Broken(), secrets=secrets, clock=clock)
    await pool.load()
    with pytest.raises(OSError):
        await pool.add("u", SECRET)
    assert await secret_store.list_names() == []
    assert pool.list() == []


async def test_flush_writes_increments_and_survives_restart(clock: FakeClock) -> None:
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, clock=clock)
    await pool.load()
    cred = await pool.add("u", "k")
    await pool.flush()  # nothing yet
    assert await store.usage() == {}
    pool.acquire("m").release(200, tokens=10)
    pool.acquire("m").release(429, retry_after=30)
    await pool.flush()
    await pool.flush()  # no double counting
    usage = (await store.usage())[cred.id]
    assert (usage.requests, usage.successes, usage.tokens, dict(usage.failures)) == (2, 1, 10, {429: 1})
    assert usage.cooldown_until == clock.now() + timedelta(seconds=30)
    # a restarted pool (secret given again through rotate) keeps totals and the cooldown
    again = DefaultCredentialPool(store, clock=clock)
    again._memory_secrets = dict(pool._memory_secrets)
    await again.load()
    (stats,) = again.stats()
    assert (stats.requests, stats.successes, stats.tokens) == (2, 1, 10)
    with pytest.raises(UnavailableError) as info:
        again.acquire("m")
    assert info.value.params["retry_after"] == 30


async def test_flush_failure_keeps_the_deltas(clock: FakeClock) -> None:
    class Flaky(MemoryCredentialStore):
        fail = True

        async def add_usage(self, deltas, records=()):  # type: ignore[no-untyped-def]
            if self.fail:
                raise OSError("down")
            await super().add_usage(deltas, records)

    store = Flaky()
    pool = DefaultCredentialPool(store, clock=clock)
    await pool.load()
    cred = await pool.add("u", "k")
    pool.acquire("m").release(200)
    with pytest.raises(OSError):
        await pool.flush()
    store.fail = False
    await pool.flush()
    assert (await store.usage())[cred.id].requests == 1


async def test_background_flush(clock: FakeClock) -> None:
    import asyncio

    waits: list[float] = []
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 1:
            await gate.wait()

    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, clock=clock, flush_interval=5, sleep=sleep)
    await pool.start()
    cred = await pool.add("u", "k")
    pool.acquire("m").release(200)
    for _ in range(10):
        await asyncio.sleep(0)
    assert waits[0] == 5
    await pool.aclose()
    assert (await store.usage())[cred.id].requests == 1


def test_error_messages_in_both_languages() -> None:
    err = UnavailableError("credentials.exhausted", model="gpt-4o", retry_after=3.5)
    for locale in ("en", "de"):
        text = err.render(locale)
        assert "gpt-4o" in text
        assert "3.5" in text
        assert "credentials." not in text


# -- review fixes: ASCII-only secrets, rotation with a lease open ----------------------------


@pytest.mark.parametrize(
    ("secret", "kind"),
    [
        ("sk-SECRET\u00e9\u20ac", "api_key"),
        ("sk-SECRET\u200b", "api_key"),
        ("sk-SECRET value", "api_key"),
        ("sk-SECRET\t", "api_key"),
        ("sk-SECRET\x7f", "api_key"),
        ("sid=SECRET\u00e9", "cookie"),
        (" sid=SECRET", "cookie"),
        ("sid=SECRET\x01", "cookie"),
    ],
)
async def test_secrets_must_be_ascii_and_errors_never_hold_them(
    clock: FakeClock, secret: str, kind: str
) -> None:
    # httpx refuses a non-ASCII header with an exception whose args carry the whole value
    pool = await make_pool(clock)
    with pytest.raises(ValidationError) as info:
        await pool.add("u", secret, kind=kind)
    assert info.value.code == "credentials.invalid"
    for text in (str(info.value), repr(info.value), repr(info.value.params), repr(info.value.args)):
        assert "SECRET" not in text
    assert pool.list() == []
    good = await pool.add("u", "sk-good" if kind == "api_key" else "sid=1", kind=kind)
    with pytest.raises(ValidationError) as rotated:
        await pool.rotate_secret(good.id, secret)
    assert "SECRET" not in repr(rotated.value)


async def test_cookie_secrets_may_hold_inner_spaces(clock: FakeClock) -> None:
    pool = await make_pool(clock)
    await pool.add("sg", "a=1; b=2", kind="cookie")
    lease = pool.acquire("m", upstream="sg")
    assert lease.header_value == "a=1; b=2"
    lease.release()
    with pytest.raises(ValidationError) as info:
        await pool.add("sg", "abc", kind="cookie", header_format="s\u00e9ssion={secret}")
    assert "format" in info.value.params["reason"]


async def test_a_stored_non_ascii_secret_loads_as_unusable(clock: FakeClock) -> None:
    secrets = DefaultSecretService(MemorySecretStore(), MasterKey(os.urandom(32), key_id="k1"), clock=clock)
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, secrets=secrets, clock=clock)
    await pool.load()
    cred = await pool.add("u", SECRET)
    await secrets.store(f"credential/{cred.id}", "sk-SECRET\u20ac")  # written before the rule
    again = DefaultCredentialPool(store, secrets=secrets, clock=clock)
    await again.load()
    (loaded,) = again.list()
    assert (loaded.enabled, loaded.disabled_reason) == (False, "secret_missing")
    with pytest.raises(UnavailableError):
        again.acquire("m")


async def test_rotating_a_secret_keeps_open_leases_on_the_live_state(clock: FakeClock) -> None:
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, clock=clock, strategy=Strategy.LEAST_USED)
    await pool.load()
    a = await pool.add("u", "sk-a", name="a")
    b = await pool.add("u", "sk-b", name="b")
    lease = pool.acquire("m")
    assert lease.credential_id == a.id
    rotated = await pool.rotate_secret(a.id, "sk-a2")
    assert rotated.enabled
    lease.release(200, tokens=100)  # the request that began before the rotation ends well
    stats = {s.name: s for s in pool.stats()}
    assert (stats["a"].in_flight, stats["a"].successes, stats["a"].tokens) == (0, 1, 100)
    # nothing is stuck in flight: least-used alternates again
    names = []
    for _ in range(4):
        lease = pool.acquire("m")
        names.append(lease.credential.name)
        assert lease.header_value in ("Bearer sk-a2", "Bearer sk-b")
        lease.release(200)
    assert sorted(names) == ["a", "a", "b", "b"]
    await pool.flush()
    usage = await store.usage()
    assert (usage[a.id].requests, usage[a.id].successes, usage[a.id].tokens) == (3, 3, 100)
    assert usage[b.id].successes == 2


async def test_rotating_a_missing_secret_makes_the_credential_usable(clock: FakeClock) -> None:
    store = MemoryCredentialStore()
    pool = DefaultCredentialPool(store, clock=clock)
    await pool.load()
    cred = await pool.add("u", SECRET)
    fresh = DefaultCredentialPool(store, clock=clock)  # no secret service: the secret is gone
    await fresh.load()
    assert fresh.get(cred.id).disabled_reason == "secret_missing"
    await fresh.rotate_secret(cred.id, "sk-renewed")
    assert fresh.get(cred.id).enabled
    assert fresh.acquire("m").header_value == "Bearer sk-renewed"

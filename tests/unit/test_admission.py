"""AdmissionService: every refusal, settle/release exactly once, remaining values and headers,
the completion cap, cost clamping, and concurrent admissions against a budget that admits exactly N
(memory on the synchronous and the asynchronous gate path, and SQL-backed budgets).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from maaskit.errors import (
    ForbiddenError,
    MaasError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)
from maaskit.services.admission import Admission, DefaultAdmissionService, SettleResult, new_request_id
from maaskit.services.ai_api import Usage
from maaskit.services.api_keys import _MAX_LIMIT, ApiKey, DefaultApiKeyService, generate_key
from maaskit.services.pricing import ModelPrice, StaticPricing
from maaskit.services.rate_limit import DefaultLimitsGate
from maaskit.services.usage import DefaultUsageService, UsageRecord
from maaskit.storage.memory.api_keys import MemoryApiKeyStore
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.storage.memory.usage import MemoryUsageStore
from maaskit.storage.ports.limits import AdmitOutcome, LimitsStore, RateOp, ReserveRequest
from maaskit.storage.sql import Database
from maaskit.testing.clock import FakeClock
from redis_support import redis_client

PEPPER = b"admission-test-pepper".ljust(32, b"!")
MODEL = "gpt-4o-mini"
OTHER = "other-model"
PRICES = {
    # 1 micro-dollar per prompt token, 2 per completion token
    MODEL: ModelPrice(MODEL, input_per_token="0.000001", output_per_token="0.000002"),
    OTHER: ModelPrice(OTHER, input_per_token="0.000001", output_per_token="0.000001"),
}
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 100}
PROMPT = 17  # 40 characters -> 10 tokens, + 4 per message + 3 per request
RESERVE = PROMPT * 1 + 100 * 2  # 217 micro-dollars


class AsyncOnlyStore(MemoryLimitsStore):
    """A memory store whose async ``admit`` is overridden: the gate must take the awaited path."""

    __slots__ = ()

    async def admit(self, rates: Sequence[RateOp], reserve: ReserveRequest | None) -> AdmitOutcome:
        await asyncio.sleep(0)  # a real suspension point, like a network store
        return self.admit_now(rates, reserve)


@attrs.define
class Env:
    """A wired admission service and its parts."""

    service: DefaultAdmissionService
    keys: DefaultApiKeyService
    usage: DefaultUsageService
    gate: DefaultLimitsGate
    store: LimitsStore
    clock: FakeClock

    async def key(self, **kwargs: Any) -> tuple[str, ApiKey]:
        created = await self.keys.create("user_1", name="test", **kwargs)
        return created.secret, created.key

    def records(self) -> list[UsageRecord]:
        return list(self.usage.pending())


def make_env(clock: FakeClock, store: LimitsStore | None = None, **kwargs: Any) -> Env:
    keys = DefaultApiKeyService(MemoryApiKeyStore(), clock, pepper=PEPPER)
    store = store if store is not None else MemoryLimitsStore(clock)
    gate = DefaultLimitsGate(store, clock)
    usage = DefaultUsageService(MemoryUsageStore(), clock)
    service = DefaultAdmissionService(keys, StaticPricing(PRICES), gate, usage, clock, **kwargs)
    return Env(service, keys, usage, gate, store, clock)


@pytest.fixture(params=["sync", "async"])
def env(request: pytest.FixtureRequest, clock: FakeClock) -> Env:
    """The same behaviour over the synchronous memory gate path and the awaited one."""
    store = MemoryLimitsStore(clock) if request.param == "sync" else AsyncOnlyStore(clock)
    built = make_env(clock, store, default_max_tokens=100)
    assert built.gate.synchronous is (request.param == "sync")
    return built


# ------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("credential", ["", "nope", "Bearer mk_x", "mk_" + "a" * 49, "MK_" + "a" * 49])
async def test_malformed_key(env: Env, credential: str) -> None:
    with pytest.raises(UnauthenticatedError) as info:
        await env.service.admit(credential, MODEL, BODY)
    assert info.value.code == "api_key.malformed"
    assert env.records() == []


async def test_unknown_key(env: Env) -> None:
    with pytest.raises(UnauthenticatedError) as info:
        await env.service.admit(generate_key(), MODEL, BODY)
    assert info.value.code == "api_key.unknown"


async def test_revoked_disabled_and_expired_keys(env: Env) -> None:
    revoked, key = await env.key()
    await env.service.admit(revoked, MODEL, BODY)  # works (and is cached) before the change
    await env.keys.revoke(key.id)
    disabled, key2 = await env.key()
    await env.keys.set_enabled(key2.id, False)
    expiring, _ = await env.key(expires_at=env.clock.now() + timedelta(hours=1))
    await env.service.admit(expiring, MODEL, BODY)
    env.clock.advance(hours=2)
    for secret, code in [
        (revoked, "api_key.revoked"),
        (disabled, "api_key.disabled"),
        (expiring, "api_key.expired"),
    ]:
        with pytest.raises(UnauthenticatedError) as info:
            await env.service.admit(secret, MODEL, BODY)
        assert info.value.code == code


@pytest.mark.parametrize(
    "model",
    [
        "",
        "../../etc/passwd",
        "openai/../secrets",
        "/abs/path",
        "models\\gpt",
        "a//b",
        "http://evil.example/v1",
        "https://evil.example",
        "file:///etc/passwd",
        "gpt 4o",
        "gpt\x00",
        "gpt\n",
        "x" * 257,
        None,
        42,
        ["gpt-4o-mini"],
    ],
)
async def test_invalid_model_names_are_refused_before_anything_is_reserved(env: Env, model: Any) -> None:
    secret, key = await env.key(budget_micros=10_000, rpm_limit=5)
    with pytest.raises(ValidationError) as info:
        await env.service.admit(secret, model, BODY)
    assert info.value.code == "admission.invalid_model"
    balance = await env.store.balance("key:" + key.id, 0)
    assert (balance.committed_micros, balance.reserved_micros) == (0, 0)
    admission = await env.service.admit(secret, MODEL, BODY)
    assert admission.remaining.requests == 4  # the refused call used no request slot


@pytest.mark.parametrize("model", ["gpt-4o-mini", "openai/gpt-4o", "meta-llama/Llama-3.1-8B:q4", "a@b+c_d.e"])
async def test_well_formed_model_names_reach_the_price_check(env: Env, model: str) -> None:
    secret, _ = await env.key()
    if model == MODEL:
        await env.service.admit(secret, model, BODY)
        return
    with pytest.raises(NotFoundError) as info:
        await env.service.admit(secret, model, BODY)
    assert info.value.code == "admission.unknown_model"


async def test_model_not_allowed_and_unknown_model(env: Env) -> None:
    secret, _ = await env.key(allowed_models=[OTHER])
    with pytest.raises(ForbiddenError) as forbidden:
        await env.service.admit(secret, MODEL, BODY)
    assert forbidden.value.code == "admission.model_not_allowed"
    assert (await env.service.admit(secret, OTHER, BODY)).model == OTHER
    open_secret, _ = await env.key()
    with pytest.raises(NotFoundError) as unknown:
        await env.service.admit(open_secret, "no-such-model", BODY)
    assert unknown.value.code == "admission.unknown_model"


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10", 100 * 64 + 1])
async def test_invalid_max_tokens(env: Env, value: object) -> None:
    secret, _ = await env.key()
    with pytest.raises(ValidationError) as info:
        await env.service.admit(secret, MODEL, {**BODY, "max_tokens": value})
    assert info.value.code == "admission.invalid_max_tokens"


async def test_rate_limited_with_exact_retry_after(env: Env) -> None:
    secret, key = await env.key(rpm_limit=2, budget_micros=100_000)
    await env.service.admit(secret, MODEL, BODY)
    await env.service.admit(secret, MODEL, BODY)
    with pytest.raises(RateLimitedError) as info:
        await env.service.admit(secret, MODEL, BODY)
    assert info.value.code == "rate_limit.exceeded"
    assert info.value.retry_after == 30.0  # 2 per minute: one slot frees every 30 s
    balance = await env.store.balance("key:" + key.id, 0)
    assert balance.reserved_micros == 2 * RESERVE  # the refused call reserved nothing
    env.clock.advance(seconds=29.999)
    with pytest.raises(RateLimitedError):
        await env.service.admit(secret, MODEL, BODY)
    env.clock.advance(seconds=0.001)
    admitted = await env.service.admit(secret, MODEL, BODY)
    assert admitted.remaining.requests == 0


async def test_a_request_larger_than_the_token_limit_can_never_pass(env: Env) -> None:
    secret, _ = await env.key(tpm_limit=50)
    with pytest.raises(RateLimitedError) as info:
        await env.service.admit(secret, MODEL, BODY)  # 17 + 100 tokens > 50
    assert info.value.code == "rate_limit.request_too_large"
    assert info.value.retry_after is None


async def test_budget_exceeded_uses_no_rate_slot(env: Env) -> None:
    secret, key = await env.key(rpm_limit=10, budget_micros=RESERVE + RESERVE // 2)
    first = await env.service.admit(secret, MODEL, BODY)
    assert first.remaining.budget_micros == RESERVE // 2
    with pytest.raises(QuotaExceededError) as info:
        await env.service.admit(secret, MODEL, BODY)
    assert info.value.code == "budget.exceeded"
    assert info.value.params["available_micros"] == RESERVE // 2
    assert info.value.params["requested_micros"] == RESERVE
    await env.service.settle(first, Usage(PROMPT, 10, PROMPT + 10, "reported"))
    again = await env.service.admit(secret, MODEL, BODY)
    assert again.remaining.requests == 8  # two admitted; the refused one took no slot
    assert again.remaining.budget_micros == key.budget_micros - (PROMPT + 20) - RESERVE  # type: ignore[operator]


# ------------------------------------------------------------------- settle and release


async def test_settle_commits_once_and_records_usage_once(env: Env) -> None:
    secret, key = await env.key(budget_micros=10_000, rpm_limit=10, tpm_limit=10_000)
    admission = await env.service.admit(secret, MODEL, BODY)
    usage = Usage(PROMPT, 30, PROMPT + 30, "reported")
    first = await env.service.settle(admission, usage, upstream="openai", streamed=True)
    assert first == SettleResult(PROMPT + 60, 0, first.settlement)
    assert first.settlement is not None
    assert not first.settlement.already_settled
    again = await env.service.settle(admission, usage)
    assert again.replayed
    assert again.cost_micros == 0
    assert again.settlement is None
    await env.service.release(admission)  # no-op after settle
    balance = await env.store.balance("key:" + key.id, 0)
    assert (balance.committed_micros, balance.reserved_micros) == (PROMPT + 60, 0)
    [record] = env.records()
    assert record.request_id == admission.request_id
    assert (record.key_id, record.owner_id, record.model) == (key.id, "user_1", MODEL)
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (PROMPT, 30, PROMPT + 30)
    assert (record.cost_micros, record.status, record.streamed, record.upstream) == (
        PROMPT + 60,
        "ok",
        True,
        "openai",
    )
    assert record.created_at == env.clock.now()


async def test_release_gives_everything_back_once(env: Env) -> None:
    secret, key = await env.key(budget_micros=10_000, rpm_limit=10, tpm_limit=1_000)
    admission = await env.service.admit(secret, MODEL, BODY)
    assert admission.remaining.tokens == 1_000 - (PROMPT + 100)
    await env.service.release(admission, upstream="openai")
    await env.service.release(admission)
    replay = await env.service.settle(admission, Usage(1, 1, 2, "reported"))
    assert replay.replayed
    balance = await env.store.balance("key:" + key.id, 0)
    assert (balance.committed_micros, balance.reserved_micros) == (0, 0)
    [record] = env.records()
    assert (record.status, record.cost_micros, record.total_tokens, record.upstream) == (
        "error",
        0,
        0,
        "openai",
    )
    after = await env.service.admit(secret, MODEL, BODY)
    assert after.remaining.tokens == 1_000 - (PROMPT + 100)  # the estimate was given back


async def test_cost_is_clamped_at_the_reservation_and_the_excess_is_recorded(env: Env) -> None:
    secret, key = await env.key(budget_micros=10_000)
    admission = await env.service.admit(secret, MODEL, BODY)
    with capture_logs() as logs:
        result = await env.service.settle(admission, Usage(PROMPT, 500, PROMPT + 500, "estimated"))
    excess = PROMPT + 1_000 - RESERVE
    assert result.cost_micros == RESERVE
    assert result.uncharged_micros == excess
    assert result.settlement is not None
    assert result.settlement.committed_micros == RESERVE  # the ledger commits the reservation ...
    assert result.settlement.overage_micros == excess  # ... and records the excess (it saw 0 before)
    balance = await env.store.balance("key:" + key.id, 0)
    assert (balance.committed_micros, balance.overage_micros) == (RESERVE, excess)
    assert [e["overage_micros"] for e in logs if e["event"] == "budget.overage"] == [excess]
    [record] = env.records()
    assert (record.cost_micros, record.usage_source) == (RESERVE, "estimated")


class BlipOnSettleStore(AsyncOnlyStore):
    """The async store whose settle fails once (a Redis or database blip), then works."""

    __slots__ = ("blips",)

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.blips = 1

    async def settle_admission(self, *args: Any, **kwargs: Any) -> Any:
        if self.blips:
            self.blips -= 1
            raise UnavailableError("redis.unavailable")
        return await super().settle_admission(*args, **kwargs)


async def test_a_settle_the_store_failed_stays_open_and_keeps_its_usage(clock: FakeClock) -> None:
    # the admission was marked settled before the store answered: a retry replayed, nothing was
    # committed or recorded, and the sweeper later expired the reservation uncharged
    env = make_env(clock, BlipOnSettleStore(clock), default_max_tokens=100)
    secret, key = await env.key(budget_micros=10_000)
    admission = await env.service.admit(secret, MODEL, BODY)
    usage = Usage(PROMPT, 10, PROMPT + 10, "reported")
    with pytest.raises(UnavailableError):
        await env.service.settle(admission, usage)
    assert not admission.settled
    assert [r.request_id for r in env.records()] == [admission.request_id]  # accounting kept it
    result = await env.service.settle(admission, usage)  # settling again commits the ledger
    assert not result.replayed
    balance = await env.store.balance("key:" + key.id, 0)
    assert (balance.committed_micros, balance.reserved_micros) == (PROMPT + 20, 0)
    assert {r.request_id for r in env.records()} == {admission.request_id}  # one row once flushed
    assert (await env.service.settle(admission, usage)).replayed


async def test_settle_corrects_the_token_estimate(env: Env) -> None:
    secret, _ = await env.key(tpm_limit=1_000)
    admission = await env.service.admit(secret, MODEL, BODY)
    await env.service.settle(admission, Usage(PROMPT, 3, PROMPT + 3, "reported"))
    nxt = await env.service.admit(secret, MODEL, BODY)
    assert nxt.remaining.tokens == 1_000 - (PROMPT + 3) - (PROMPT + 100)


@pytest.mark.parametrize(
    ("usage", "kwargs"),
    [
        (Usage(-1, 0, 0, "reported"), {}),
        (Usage(1, 1, -2, "reported"), {}),
        (Usage(1, 1, 2, "guessed"), {}),  # type: ignore[arg-type]
        (Usage(1, 1, 2, "reported"), {"status": "fine"}),
        (Usage(1, 1, 2, "reported"), {"upstream": "bad\nname"}),
        (Usage(1, 1, 2, "reported"), {"streamed": "yes"}),
        (Usage(1, 1, 2, "reported"), {"upstream": ["not", "hashable"]}),
        (Usage(1, 1, 2, ["not", "hashable"]), {}),  # type: ignore[arg-type]
        (Usage(1, 1, 2, "reported"), {"status": {"not": "hashable"}}),
        (Usage(1.0, 1, 2, "reported"), {}),  # type: ignore[arg-type]
        (Usage(1, 1, 2**63, "reported"), {}),
    ],
)
async def test_bad_settle_input_writes_nothing_and_leaves_the_admission_open(
    env: Env, usage: Usage, kwargs: dict[str, Any]
) -> None:
    secret, key = await env.key(budget_micros=10_000)
    admission = await env.service.admit(secret, MODEL, BODY)
    with pytest.raises(ValidationError):
        await env.service.settle(admission, usage, **kwargs)
    assert not admission.settled
    balance = await env.store.balance("key:" + key.id, 0)
    assert (balance.committed_micros, balance.reserved_micros) == (0, RESERVE)
    assert env.records() == []
    await env.service.release(admission)
    balance = await env.store.balance("key:" + key.id, 0)
    assert balance.reserved_micros == 0


# ---------------------------------------------------------------- remaining and headers


async def test_remaining_and_headers(env: Env) -> None:
    secret, key = await env.key(rpm_limit=10, tpm_limit=10_000, budget_micros=1_000_000)
    admission = await env.service.admit(secret, MODEL, BODY)
    remaining = admission.remaining
    assert remaining.budget_micros == 1_000_000 - RESERVE
    assert remaining.requests == 9
    assert remaining.tokens == 10_000 - (PROMPT + 100)
    assert remaining.requests_reset_after == 6.0  # one request of 10/min refills in 6 s
    assert remaining.tokens_reset_after == (PROMPT + 100) * 6 / 1000
    assert admission.headers() == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": str(10_000 - (PROMPT + 100)),
        "x-ratelimit-reset-tokens": f"{(PROMPT + 100) * 6}ms",
    }
    assert admission.key == key
    assert admission.reserved_micros == RESERVE
    assert admission.prompt_tokens_estimate == PROMPT
    env.clock.advance(seconds=3)
    later = await env.service.admit(secret, MODEL, BODY)
    assert later.remaining.requests == 8  # 1.5 of 10 in use (half a request refilled), floored
    assert later.remaining.budget_micros == 1_000_000 - 2 * RESERVE


async def test_a_key_without_limits_has_no_headers(env: Env) -> None:
    secret, _ = await env.key()
    admission = await env.service.admit(secret, MODEL, BODY)
    assert admission.headers() == {}
    remaining = admission.remaining
    assert (remaining.budget_micros, remaining.requests, remaining.tokens) == (None, None, None)
    assert admission.decision.ticket is not None
    assert admission.decision.ticket.reservation_id is None
    await env.service.settle(admission, Usage(1, 1, 2, "reported"))
    assert len(env.records()) == 1


async def test_changed_limits_apply_at_once(env: Env) -> None:
    secret, key = await env.key(rpm_limit=100, budget_micros=10_000)
    assert (await env.service.admit(secret, MODEL, BODY)).remaining.requests == 99
    await env.keys.update_limits(key.id, rpm_limit=5)
    await env.keys.update_budget(key.id, 5_000)
    admission = await env.service.admit(secret, MODEL, BODY)
    assert admission.headers()["x-ratelimit-limit-requests"] == "5"
    assert admission.remaining.budget_micros == 5_000 - 2 * RESERVE


# ------------------------------------------------------------------------ the completion cap


async def test_max_tokens_defaults_to_the_cap_and_goes_upstream(env: Env) -> None:
    secret, _ = await env.key(budget_micros=10_000)
    body = {"model": MODEL, "messages": BODY["messages"]}
    admission = await env.service.admit(secret, MODEL, body)
    assert admission.max_tokens == 100  # the configured default
    assert admission.reserved_micros == PROMPT + 200
    upstream = admission.upstream_body(body)
    assert upstream == {**body, "max_tokens": 100}
    assert "max_tokens" not in body  # the caller's body is not changed
    explicit = await env.service.admit(secret, MODEL, {**body, "max_tokens": 7})
    assert explicit.max_tokens == 7
    assert explicit.reserved_micros == PROMPT + 14
    assert explicit.upstream_body({**body, "max_tokens": 7}) == {**body, "max_tokens": 7}
    completion = await env.service.admit(secret, MODEL, {**body, "max_completion_tokens": 9})
    assert completion.max_tokens == 9
    assert completion.upstream_body({**body, "max_completion_tokens": 9}) == {
        **body,
        "max_completion_tokens": 9,
    }
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "x"}]} \r\n' % MODEL.encode()
    spliced = admission.upstream_json(json.loads(raw), raw)
    assert spliced.startswith(raw.rstrip()[:-1])
    assert json.loads(spliced) == {**json.loads(raw), "max_tokens": 100}
    explicit_raw = json.dumps({**body, "max_tokens": 7}).encode()
    assert explicit.upstream_json(json.loads(explicit_raw), explicit_raw) is explicit_raw
    assert json.loads(admission.upstream_json({}, b"{ }")) == {"max_tokens": 100}
    with pytest.raises(ValidationError) as caught:
        admission.upstream_json(body, b'{"model": "x"')
    assert caught.value.code == "admission.invalid_body"
    embeddings = await env.service.admit(secret, MODEL, {"input": "y" * 8}, max_output_tokens=0)
    assert (embeddings.max_tokens, embeddings.prompt_tokens_estimate, embeddings.reserved_micros) == (0, 2, 2)


async def test_a_null_cap_counts_as_absent_and_the_upstream_gets_the_reserved_cap(env: Env) -> None:
    secret, _ = await env.key(budget_micros=10_000)
    base = {"model": MODEL, "messages": BODY["messages"]}
    # max_completion_tokens: null, max_tokens: 5 -> upstreams apply 5; so is the reservation
    both = {**base, "max_completion_tokens": None, "max_tokens": 5}
    admission = await env.service.admit(secret, MODEL, both)
    assert admission.max_tokens == 5
    assert admission.upstream_body(both) == both
    # a lone null cap would leave the upstream uncapped: it gets the default the reservation assumed
    for field in ("max_tokens", "max_completion_tokens"):
        body = {**base, field: None}
        admission = await env.service.admit(secret, MODEL, body)
        assert admission.max_tokens == 100
        assert admission.upstream_body(body)["max_tokens"] == 100
        raw = json.dumps(body).encode()
        sent = json.loads(admission.upstream_json(body, raw))
        assert sent["max_tokens"] == 100
        assert sent == admission.upstream_body(body)
    with pytest.raises(ValidationError) as caught:
        await env.service.admit(secret, MODEL, {**base, "max_completion_tokens": None, "max_tokens": "9"})
    assert caught.value.code == "admission.invalid_max_tokens"


async def test_n_choices_multiply_the_reserved_completion_tokens(env: Env) -> None:
    # n=128 with max_tokens=1000 reserved 1,000 completion tokens; the upstream could return 128,000
    secret, key = await env.key(budget_micros=10_000)
    base = {"model": MODEL, "messages": BODY["messages"]}
    one = await env.service.admit(secret, MODEL, {**base, "max_tokens": 10})
    four = await env.service.admit(secret, MODEL, {**base, "max_tokens": 10, "n": 4})
    assert (one.choices, four.choices) == (1, 4)
    assert four.max_tokens == 10  # the cap of one choice, as the upstream gets it
    assert one.reserved_micros == PROMPT + 10 * 2
    assert four.reserved_micros == PROMPT + 4 * 10 * 2
    defaulted = await env.service.admit(secret, MODEL, {**base, "n": 3})  # the default cap, per choice
    assert defaulted.reserved_micros == PROMPT + 3 * 100 * 2
    assert defaulted.upstream_body({**base, "n": 3})["max_tokens"] == 100
    null = await env.service.admit(secret, MODEL, {**base, "n": None, "max_tokens": 10})
    assert (null.choices, null.reserved_micros) == (1, one.reserved_micros)
    balance = await env.store.balance("key:" + key.id, 0)
    assert balance.reserved_micros == sum(a.reserved_micros for a in (one, four, defaulted, null))


async def test_both_caps_are_checked_and_the_larger_is_reserved(env: Env) -> None:
    # max_completion_tokens=5 with max_tokens=10**9 reserved 5 tokens and forwarded both
    secret, _ = await env.key(budget_micros=10_000)
    base = {"model": MODEL, "messages": BODY["messages"]}
    both = await env.service.admit(secret, MODEL, {**base, "max_completion_tokens": 5, "max_tokens": 9})
    assert both.max_tokens == 9
    assert both.reserved_micros == PROMPT + 9 * 2
    reversed_ = await env.service.admit(secret, MODEL, {**base, "max_completion_tokens": 9, "max_tokens": 5})
    assert reversed_.max_tokens == 9
    for bad in (10**9, 0, -1, True, 2.5, "5"):
        with pytest.raises(ValidationError) as caught:
            await env.service.admit(secret, MODEL, {**base, "max_completion_tokens": 5, "max_tokens": bad})
        assert caught.value.code == "admission.invalid_max_tokens"
        assert "max_tokens" in str(caught.value)


@pytest.mark.parametrize("bad", [0, -1, 129, True, 1.0, "2", [2]])
async def test_bad_n_is_refused_before_anything_is_reserved(env: Env, bad: object) -> None:
    secret, key = await env.key(budget_micros=10_000)
    with pytest.raises(ValidationError) as caught:
        await env.service.admit(secret, MODEL, {**BODY, "n": bad})
    assert caught.value.code == "admission.invalid_body"
    assert "n must be an integer from 1 to 128" in str(caught.value)
    assert (await env.store.balance("key:" + key.id, 0)).reserved_micros == 0


@given(
    cap=st.one_of(st.none(), st.integers(1, 6400)),
    other=st.one_of(st.none(), st.integers(1, 6400)),
    choices=st.one_of(st.none(), st.integers(1, 128)),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_the_reservation_covers_every_completion_the_upstream_may_return(
    env: Env, cap: int | None, other: int | None, choices: int | None
) -> None:
    # whichever cap the upstream honours, n choices of it cost at most what was reserved
    secret, _ = await env.key()
    body: dict[str, Any] = {"model": MODEL, "messages": BODY["messages"]}
    for name, value in (("max_completion_tokens", cap), ("max_tokens", other), ("n", choices)):
        if value is not None:
            body[name] = value
    admission = await env.service.admit(secret, MODEL, body)
    sent = admission.upstream_body(body)
    honoured = [v for v in (sent.get("max_completion_tokens"), sent.get("max_tokens")) if v is not None]
    worst = max(honoured) * (choices or 1)
    assert admission.reserved_micros == PRICES[MODEL].cost_micros(admission.prompt_tokens_estimate, worst)


def test_default_max_tokens_is_validated(clock: FakeClock) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValidationError):
            make_env(clock, default_max_tokens=bad)


def test_request_ids_are_unique() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000


# --------------------------------------------------------- fast path == general path


async def test_synchronous_and_awaited_gate_paths_agree() -> None:
    fast_clock, slow_clock = FakeClock(), FakeClock()
    fast = make_env(fast_clock, MemoryLimitsStore(fast_clock), default_max_tokens=100)
    slow = make_env(slow_clock, AsyncOnlyStore(slow_clock), default_max_tokens=100)
    assert fast.gate.synchronous
    assert not slow.gate.synchronous
    limits = {"rpm_limit": 4, "tpm_limit": 600, "budget_micros": 4 * RESERVE}
    (fast_secret, fast_key), (slow_secret, slow_key) = await fast.key(**limits), await slow.key(**limits)
    seen: list[tuple[Any, ...]] = []
    runs = ((fast, fast_secret, fast_clock, fast_key), (slow, slow_secret, slow_clock, slow_key))
    for env, secret, clock, key in runs:
        outcomes: list[Any] = []
        for step in range(16):
            try:
                admission = await env.service.admit(secret, MODEL, BODY)
            except MaasError as exc:
                params = dict(exc.params)
                if "account" in params:  # the only value that differs: each env has its own key
                    assert params.pop("account") == "key:" + key.id
                outcomes.append((exc.code, params))
            else:
                outcomes.append((admission.headers(), admission.remaining, admission.decision.rates))
                if step % 3:
                    await env.service.settle(admission, Usage(PROMPT, 90, PROMPT + 90, "reported"))
                else:
                    await env.service.release(admission)
            clock.advance(seconds=4)
        seen.append(tuple(outcomes))
    assert seen[0] == seen[1]
    codes = {o[0] for o in seen[0] if isinstance(o[0], str)}
    assert codes == {"rate_limit.exceeded", "budget.exceeded"}  # the scenario hits both refusals


# ------------------------------------------------------------------------- concurrency

N = 37
CALLS = 300


async def _exactly_n(env: Env) -> None:
    secret, key = await env.key(rpm_limit=10_000, tpm_limit=10**6, budget_micros=N * RESERVE)

    async def attempt() -> Admission | MaasError:
        try:
            return await env.service.admit(secret, MODEL, BODY)
        except QuotaExceededError as exc:
            return exc

    results = await asyncio.gather(*(attempt() for _ in range(CALLS)))
    admitted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if isinstance(r, MaasError)]
    assert len(admitted) == N
    assert all(r.code == "budget.exceeded" for r in refused)
    assert len(refused) == CALLS - N
    assert len({a.request_id for a in admitted}) == N
    # actual costs at or above the reservation: everything committed, clamped at the budget
    usages = [Usage(PROMPT, 100 + i % 3, PROMPT + 100 + i % 3, "reported") for i in range(N)]
    await asyncio.gather(*(env.service.settle(a, u) for a, u in zip(admitted, usages, strict=True)))
    balance = await env.store.balance("key:" + key.id, 0)
    assert balance.reserved_micros == 0
    assert balance.committed_micros == N * RESERVE <= key.budget_micros  # type: ignore[operator]
    assert len(env.records()) == N
    with pytest.raises(QuotaExceededError):
        await env.service.admit(secret, MODEL, BODY)


async def test_concurrent_admissions_admit_exactly_n(env: Env) -> None:
    await _exactly_n(env)


async def test_concurrent_admissions_admit_exactly_n_with_sql_budgets(
    sql_db: Database, clock: FakeClock
) -> None:
    from maaskit.storage.sql.budget import SqlLedgerStore
    from maaskit.storage.sql.limits import SqlBackedLimitsStore

    store = SqlBackedLimitsStore(MemoryLimitsStore(clock), SqlLedgerStore(sql_db, clock))
    env = make_env(clock, store, default_max_tokens=100)
    assert not env.gate.synchronous
    await _exactly_n(env)


async def test_concurrent_admissions_admit_exactly_n_with_redis(
    redis_url: str, redis_prefix: str, clock: FakeClock
) -> None:
    from maaskit.storage.redis.limits import RedisLimitsStore

    async with redis_client(redis_url, redis_prefix) as client:
        store = RedisLimitsStore(client, prefix=redis_prefix, clock=clock)
        await store.load_scripts()
        env = make_env(clock, store, default_max_tokens=100)
        assert not env.gate.synchronous
        await _exactly_n(env)


async def test_the_largest_limits_a_key_accepts_are_limits_admission_can_apply(env: Env) -> None:
    secret, key = await env.key(rpm_limit=_MAX_LIMIT, tpm_limit=_MAX_LIMIT)
    admission = await env.service.admit(secret, MODEL, BODY)
    assert admission.headers()["x-ratelimit-limit-tokens"] == str(_MAX_LIMIT)
    for field in ("rpm_limit", "tpm_limit"):
        with pytest.raises(ValidationError) as caught:
            await env.keys.update_limits(key.id, **{field: _MAX_LIMIT + 1})
        assert caught.value.code == "api_key.invalid_field"
        with pytest.raises(ValidationError):
            await env.key(**{field: _MAX_LIMIT + 1})


class _GatedAuthorizer:
    """Counts permission checks and holds each one until the gate opens."""

    def __init__(self, allowed: bool = True) -> None:
        self.checks = 0
        self.allowed = allowed
        self.gate = asyncio.Event()

    async def principal_for_key(self, key: ApiKey) -> Any:
        self.checks += 1
        await self.gate.wait()
        allowed = self.allowed
        return type("P", (), {"allows": staticmethod(lambda permission: allowed)})()


@pytest.mark.parametrize("allowed", [True, False])
async def test_concurrent_requests_of_a_key_share_one_permission_check(
    clock: FakeClock, allowed: bool
) -> None:
    authorizer = _GatedAuthorizer(allowed)
    env = make_env(clock, authorizer=authorizer, permission_ttl=5.0)
    secret, _ = await env.key(budget_micros=10**9)
    admits = [asyncio.ensure_future(env.service.admit(secret, MODEL, BODY)) for _ in range(10)]
    await asyncio.sleep(0)
    admits[0].cancel()  # a request that goes away does not cancel the others' check
    await asyncio.sleep(0)
    authorizer.gate.set()
    results = await asyncio.gather(*admits[1:], return_exceptions=True)
    assert authorizer.checks == 1
    if allowed:
        assert all(isinstance(r, Admission) for r in results)
        await env.service.admit(secret, MODEL, BODY)  # within the TTL: no new check
        assert authorizer.checks == 1
        clock.advance(seconds=6)
        await env.service.admit(secret, MODEL, BODY)
        assert authorizer.checks == 2
    else:
        assert all(isinstance(r, ForbiddenError) and r.code == "rbac.forbidden" for r in results)

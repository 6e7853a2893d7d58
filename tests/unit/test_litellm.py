"""LiteLLMService: typed model info, management calls, hostile answers, breaker, secrets, fallback."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import MaasError, NotFoundError, UnavailableError, UpstreamError, ValidationError
from maaskit.services.litellm import (
    DefaultLiteLLMService,
    LiteLLMConfig,
    ModelInfo,
    check_model_id,
    check_price,
    decode_json,
    encode_json,
    parse_model_info,
)
from maaskit.services.upstream import CircuitBreaker, CircuitState, RetryPolicy, Timeouts
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_litellm import FakeLiteLLM

MASTER = "sk-master-secret-123"


async def _nosleep(_seconds: float) -> None:
    return None


def make(
    fake: FakeLiteLLM,
    clock: FakeClock | None = None,
    *,
    attempts: int = 1,
    fallback: list[ModelInfo] | None = None,
    threshold: int = 3,
) -> DefaultLiteLLMService:
    clock = clock or FakeClock()
    return DefaultLiteLLMService(
        LiteLLMConfig(base_url=fake.base_url, master_key=MASTER),
        httpx.AsyncClient(transport=fake.httpx_transport()),
        clock=clock,
        breaker=CircuitBreaker("litellm", clock, failure_threshold=threshold),
        retry=RetryPolicy(max_attempts=attempts, sleep=_nosleep),
        fallback_models=fallback,
    )


@pytest.fixture
def fake() -> FakeLiteLLM:
    fake = FakeLiteLLM(master_key=MASTER)
    fake.add_model(
        "gpt-cheap",
        input_cost_per_token="0.00000015",
        output_cost_per_token="0.0000006",
        max_input_tokens=128000,
        max_output_tokens=4096,
        supports={"vision": True, "tools": False},
    )
    fake.add_model("meta-llama/Llama-3-8B", input_cost_per_token=0, output_cost_per_token=0)
    return fake


def entry(name: object, **info: object) -> dict[str, object]:
    return {"model_name": name, "litellm_params": {"model": "openai/x"}, "model_info": info}


async def test_model_info_parses_prices_as_exact_decimals(fake: FakeLiteLLM) -> None:
    models = {m.model_name: m for m in await make(fake).get_model_info()}
    cheap = models["gpt-cheap"]
    assert cheap.input_cost_per_token == Decimal("0.00000015")
    assert type(cheap.input_cost_per_token) is Decimal
    assert cheap.capabilities == frozenset({"vision"})  # false flags are not capabilities
    assert cheap.context_window == 128000
    assert models["meta-llama/Llama-3-8B"].input_cost_per_token == Decimal(0)


def test_decode_json_never_produces_floats() -> None:
    data = decode_json(b'{"a": 1.5e-07, "b": [0.1, 2], "c": NaN}')
    assert data["a"] == Decimal("1.5e-07")
    assert data["b"][0] == Decimal("0.1")
    assert data["c"].is_nan()


@given(st.decimals(min_value=0, max_value=1, places=18, allow_nan=False))
def test_encode_json_round_trips_decimals_exactly(value: Decimal) -> None:
    assert decode_json(encode_json({"p": value, "l": [value]})) == {"p": value, "l": [value]}


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "/abs/model",
        "a\\b",
        "http://evil.example/x",
        "https:x//y",
        "a//b",
        "a b",
        "",
        "x\n",
        ".hidden",
        "a/../b",
        "a" * 300,
    ],
)
def test_hostile_model_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_model_id(bad)
    assert info.value.code == "catalog.invalid_model_id"


@pytest.mark.parametrize(
    "good", ["gpt-4o", "openai/gpt-4o", "meta-llama/Llama-3.1-8B", "claude-3:beta", "a@b+c=d"]
)
def test_ordinary_model_ids_pass(good: str) -> None:
    assert check_model_id(good) == good


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-0.1", "negative"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("1000000", "above"),
        ("1e-30", "places"),
        ("1e-1000028", "places"),  # normalize() rounded it to 0: a price would become free
        ("1e-999999999", "places"),
        ('"1E-1000028"', "places"),
    ],
)
def test_hostile_prices_become_problems(value: str, reason: str) -> None:
    body = ('{"data": [{"model_name": "m", "model_info": {"input_cost_per_token": ' + value + "}}]}").encode()
    snapshot = parse_model_info(body)
    assert snapshot.models == ()
    assert reason in snapshot.problems[0].reason


def test_duplicate_names_are_refused_entirely() -> None:
    body = json.dumps({"data": [entry("a"), entry("b"), entry("a")]}).encode()
    snapshot = parse_model_info(body)
    assert [m.model_name for m in snapshot.models] == ["b"]
    assert {p.reason for p in snapshot.problems} == {"duplicate model name"}
    assert len(snapshot.problems) == 2


async def test_get_model_info_raises_on_any_refused_entry(fake: FakeLiteLLM) -> None:
    fake.raw_next({"data": [entry("ok"), entry("http://evil/x")]})
    with pytest.raises(UpstreamError) as info:
        await make(fake).get_model_info()
    assert info.value.code == "litellm.invalid_response"
    assert "1 model entries refused" in info.value.params["reason"]


@pytest.mark.parametrize("script", ["html", "truncate", "500", "not_object", "no_data"])
async def test_hostile_answers_become_typed_errors(fake: FakeLiteLLM, script: str) -> None:
    if script == "html":
        fake.html_next()
    elif script == "truncate":
        fake.truncate_next()
    elif script == "500":
        fake.fail_next(500)
    elif script == "not_object":
        fake.raw_next([1, 2])
    else:
        fake.raw_next({"models": []})
    with pytest.raises(UpstreamError) as info:
        await make(fake).get_model_info()
    assert info.value.code == ("litellm.error" if script == "500" else "litellm.invalid_response")


async def test_a_stalled_proxy_times_out_on_loopback(fake: FakeLiteLLM) -> None:
    fake.stall_next()
    async with fake.serve() as base_url, httpx.AsyncClient() as client:
        service = DefaultLiteLLMService(
            LiteLLMConfig(
                base_url=base_url, master_key=MASTER, timeouts=Timeouts(connect=1, read=0.2, total=1)
            ),
            client,
            retry=RetryPolicy(max_attempts=1),
        )
        with pytest.raises(UpstreamError) as info:
            await service.get_model_info()
        assert info.value.code == "litellm.timeout"
        assert len(await service.get_model_info()) == 2  # the next call is answered


async def test_breaker_opens_after_repeated_failures(fake: FakeLiteLLM) -> None:
    service = make(fake, threshold=3)
    fake.html_next()
    fake.fail_next(502)
    fake.truncate_next()
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await service.get_model_info()
    assert service.breaker.state is CircuitState.OPEN
    calls = len(fake.requests)
    with pytest.raises(UnavailableError) as info:
        await service.get_models()
    assert info.value.code == "upstream.circuit_open"
    assert len(fake.requests) == calls  # refused without a request


async def test_reads_are_retried_on_5xx_but_writes_are_not(fake: FakeLiteLLM) -> None:
    service = make(fake, attempts=3)
    fake.fail_next(503)
    assert len(await service.get_models()) == 2
    fake.fail_next(503)
    with pytest.raises(UpstreamError):
        await service.generate_key(key_alias="x")
    assert fake.keys == {}


async def test_master_key_never_leaks(fake: FakeLiteLLM) -> None:
    service = make(fake)
    assert MASTER not in repr(service)
    assert MASTER not in repr(LiteLLMConfig(base_url="http://x", master_key=MASTER))
    fake.raw_next(f'{{"error": {{"message": "bad key {MASTER}"}}}}', status=400)
    with pytest.raises(ValidationError) as info:
        await service.get_models()
    assert MASTER not in str(info.value)
    assert MASTER not in repr(info.value)
    wrong = DefaultLiteLLMService(
        LiteLLMConfig(base_url=fake.base_url, master_key="sk-wrong"),
        httpx.AsyncClient(transport=fake.httpx_transport()),
    )
    with pytest.raises(UpstreamError) as auth:
        await wrong.get_models()
    assert auth.value.code == "litellm.auth_failed"


async def test_master_key_is_sent_as_bearer() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json={"data": []})

    service = DefaultLiteLLMService(
        LiteLLMConfig(base_url="http://proxy", master_key=MASTER),
        httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    assert await service.get_models() == ()
    assert seen == [f"Bearer {MASTER}"]


async def test_fallback_catalog_only_when_configured(fake: FakeLiteLLM) -> None:
    fake.fail_next(500)
    with pytest.raises(UpstreamError):
        await make(fake).fetch_models()
    fallback = [
        ModelInfo("dev-model", input_cost_per_token=Decimal("0.000001"), output_cost_per_token=Decimal(0))
    ]
    fake.fail_next(500)
    snapshot = await make(fake, fallback=fallback).fetch_models()
    assert snapshot.is_fallback
    assert snapshot.source == "fallback"
    assert [m.model_name for m in snapshot.models] == ["dev-model"]
    with pytest.raises(ValidationError):
        make(fake, fallback=fallback * 2)


async def test_key_team_user_management(fake: FakeLiteLLM) -> None:
    service = make(fake)
    key = await service.generate_key(key_alias="ci", models=["gpt-cheap"], max_budget=Decimal("12.5"))
    assert key.key is not None
    assert key.key not in repr(key)
    assert fake.keys[key.token or ""]["max_budget"] == Decimal("12.5")
    info = await service.key_info(key.key)
    assert info.models == ("gpt-cheap",)
    assert info.max_budget == Decimal("12.5")
    assert all(key.key not in path for _m, path in fake.requests)  # the raw key never in a URL
    updated = await service.update_key(key.key, max_budget=Decimal(20))
    assert updated.max_budget == Decimal(20)
    assert await service.delete_keys([key.key]) == (key.key,)
    with pytest.raises(NotFoundError):
        await service.key_info(key.key)
    team = await service.new_team(team_id="t1", team_alias="Team", models=["gpt-cheap"])
    assert team.team_id == "t1"
    assert (await service.update_team("t1", max_budget=Decimal(5))).max_budget == Decimal(5)
    assert (await service.team_info("t1")).team_alias == "Team"
    await service.delete_teams(["t1"])
    with pytest.raises(NotFoundError):
        await service.team_info("t1")
    user = await service.new_user(user_id="u1", user_email="u@example.com")
    assert user.user_id == "u1"
    assert (await service.user_info("u1")).user_email == "u@example.com"


async def test_management_arguments_are_validated(fake: FakeLiteLLM) -> None:
    service = make(fake)
    with pytest.raises(ValidationError):
        await service.generate_key(max_budget=1.5)  # floats refused
    with pytest.raises(ValidationError):
        await service.generate_key(max_budget=Decimal("-1"))
    with pytest.raises(ValidationError):
        await service.generate_key(unknown_field=1)
    with pytest.raises(ValidationError):
        await service.generate_key(models=["../x"])
    assert fake.requests == []


async def test_connection_check_never_raises_for_a_dead_proxy() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    service = DefaultLiteLLMService(
        LiteLLMConfig(base_url="http://proxy", master_key=MASTER),
        httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    check = await service.test_connection()
    assert not check.ok
    assert check.error == "litellm.unreachable"
    with pytest.raises(MaasError):
        await service.ping()


def test_config_from_settings_requires_url_and_key() -> None:
    from maaskit.settings import Settings

    with pytest.raises(ValidationError):
        LiteLLMConfig.from_settings(Settings())
    cfg = LiteLLMConfig.from_settings(
        Settings(litellm_url="http://127.0.0.1:4000", litellm_master_key=MASTER)
    )
    assert cfg.base_url == "http://127.0.0.1:4000"
    assert MASTER not in repr(cfg)


# -- review fixes ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e-1000028", "1E-19", "0.0000000000000000001"])
def test_a_non_zero_price_never_becomes_zero(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_price(value, field="input_cost_per_token")
    assert "places" in info.value.params["reason"]
    with pytest.raises(ValidationError):
        ModelInfo("m", input_cost_per_token=Decimal(value))
    assert check_price("1E-18", field="x") == Decimal("1E-18")
    assert check_price("0.100000000000000000000000000000", field="x") == Decimal("0.1")


def _service(handler: object, **config: object) -> DefaultLiteLLMService:
    clock = FakeClock()
    return DefaultLiteLLMService(
        LiteLLMConfig(base_url="http://proxy", master_key=MASTER, **config),  # type: ignore[arg-type]
        httpx.AsyncClient(transport=httpx.MockTransport(handler)),  # type: ignore[arg-type]
        clock=clock,
        breaker=CircuitBreaker("litellm", clock, failure_threshold=2),
        retry=RetryPolicy(max_attempts=1, sleep=_nosleep),
    )


async def test_an_undecodable_body_is_an_invalid_response() -> None:
    # httpx.DecodingError escaped raw from _request and _probe
    service = _service(
        lambda request: httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip")
    )
    with pytest.raises(UpstreamError) as info:
        await service.get_models()
    assert info.value.code == "litellm.invalid_response"
    check = await service.test_connection()  # never raises
    assert (check.ok, check.error) == (False, "litellm.invalid_response")
    with pytest.raises(UpstreamError) as ping:
        await service.ping()
    assert ping.value.code == "litellm.invalid_response"
    with pytest.raises(UpstreamError):
        await service.fetch_models()
    assert service.breaker.state is CircuitState.OPEN  # counted as failures


async def test_total_timeout_bounds_a_trickled_answer() -> None:
    # the total timeout became a per-read gap: a proxy trickling bytes was never cut off
    class Trickle(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield b'{"data": ['
            for _ in range(100):
                await asyncio.sleep(0.05)
                yield b" "
            yield b"]}"

    service = _service(
        lambda request: httpx.Response(200, stream=Trickle()),
        timeouts=Timeouts(connect=1.0, read=1.0, total=0.3),
    )
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await service.get_models()
    assert info.value.code == "litellm.timeout"
    assert time.monotonic() - started < 2.0
    check = await service.test_connection()
    assert check.error == "litellm.timeout"
    assert time.monotonic() - started < 4.0


async def test_the_body_size_limit_applies_while_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    import maaskit.services.litellm as litellm_module

    monkeypatch.setattr(litellm_module, "_MAX_BODY", 64 * 1024)
    pulled = [0]

    class Big(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for _ in range(64):  # 1 MiB in all
                pulled[0] += 1
                yield b" " * 16384

    service = _service(lambda request: httpx.Response(200, stream=Big()))
    with pytest.raises(UpstreamError) as info:
        await service.fetch_models()
    assert info.value.code == "litellm.invalid_response"
    assert str(64 * 1024) in info.value.params["reason"]
    assert pulled[0] <= 5  # stopped at the limit, not read whole
    with pytest.raises(UpstreamError):
        await service.get_models()
    assert service.breaker.state is CircuitState.OPEN


@pytest.mark.parametrize("key", ["sk-SECRET\u20ac", "sk-SECRET\u00e9", "sk SECRET", "sk-SECRET\t"])
def test_master_key_must_be_visible_ascii(key: str) -> None:
    with pytest.raises(ValidationError) as info:
        DefaultLiteLLMService(LiteLLMConfig(base_url="http://proxy", master_key=key))
    assert info.value.code == "litellm.invalid_config"
    for text in (str(info.value), repr(info.value), repr(info.value.params)):
        assert "SECRET" not in text

"""The official ``openai`` client against the reference gateway on loopback (issue 3, "Must show").

Every call goes client -> uvicorn (gateway) -> aiohttp -> FakeUpstream served on 127.0.0.1. The
refusals must arrive as the client's own exception types, and the usage report must match the
calls exactly (requests, tokens, micro-dollar costs rounded up), also for a stream whose client
went away mid-way and for upstream failures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from maaskit.services.api_keys import generate_key

if TYPE_CHECKING:  # fixtures' types (conftest is not importable at run time)
    from conftest import Gateway, GatewayFactory

MESSAGES: Any = [{"role": "user", "content": "Say hello to the gateway"}]


def _auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict), body
    return body


def _budget_left(headers: httpx.Headers) -> int:
    """``x-maaskit-budget-remaining`` in micro-dollars."""
    from maaskit.money import to_micros

    return to_micros(headers["x-maaskit-budget-remaining"], field="header")


async def _settled_rows(gateway: Gateway, key_id: str) -> list[dict[str, Any]]:
    """The key's usage rows once its stream was settled: the official client closes the
    connection as soon as it reads ``[DONE]``, so the gateway may settle a moment later."""

    async def settled() -> bool:
        return bool(await gateway.usage(key_id=key_id))

    assert await gateway.eventually(settled), "the stream was never settled"
    return await gateway.usage(key_id=key_id)


# -- the happy paths ------------------------------------------------------------------------------


async def test_chat_completion_with_rate_limit_headers(gateway: Gateway) -> None:
    key = await gateway.create_key(budget="0.01", rpm_limit=100, tpm_limit=100_000)
    client = gateway.openai(key["secret"])

    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, max_tokens=16
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == gateway.fake.reply
    assert completion.usage is not None
    assert completion.usage.completion_tokens == gateway.fake.completion_tokens
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["x-ratelimit-reset-requests"]
    assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100_000
    # the budget header shows what is left after this request's actual cost (it was settled
    # before the response was sent)
    cost = gateway.cost("fake-model", completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert _budget_left(raw.headers) == 10_000 - cost
    # the upstream got the gateway's own key, the caller's body and nothing of the caller's key
    forwarded = gateway.fake.requests[-1]
    assert forwarded.path == "/v1/chat/completions"
    assert forwarded.authorized
    assert forwarded.json["messages"] == MESSAGES
    assert forwarded.json["max_tokens"] == 16
    assert key["secret"] not in forwarded.body.decode()


async def test_a_streams_budget_header_counts_its_whole_reservation(gateway: Gateway) -> None:
    # a stream's headers go out before its cost is known: what is left after its reservation
    key = await gateway.create_key(budget="0.01")
    body = {"model": "fake-model", "messages": MESSAGES, "max_tokens": 16}
    async with (
        httpx.AsyncClient(base_url=gateway.base, timeout=10) as raw_client,
        raw_client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=_auth(key["secret"])
        ) as response,
    ):
        left_during = _budget_left(response.headers)
        await response.aread()
    rows = await gateway.usage(key_id=key["id"])
    assert len(rows) == 1
    assert left_during < 10_000 - rows[0]["cost_micros"]  # the reservation covered 16 tokens
    later = await gateway.openai(key["secret"]).chat.completions.with_raw_response.create(**body)
    usage = later.parse().usage
    assert usage is not None
    later_cost = gateway.cost("fake-model", usage.prompt_tokens, usage.completion_tokens)
    assert _budget_left(later.headers) == 10_000 - rows[0]["cost_micros"] - later_cost


async def test_missing_max_tokens_gets_the_configured_cap(gateway: Gateway) -> None:
    key = await gateway.create_key()
    await gateway.openai(key["secret"]).chat.completions.create(model="fake-model", messages=MESSAGES)
    assert gateway.fake.requests[-1].json["max_tokens"] == gateway.settings.default_max_tokens


async def test_stream_with_include_usage(gateway: Gateway) -> None:
    key = await gateway.create_key(budget="0.01")
    client = gateway.openai(key["secret"])

    stream = await client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    text = []
    usages = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usages.append(chunk.usage)

    assert "".join(text) == gateway.fake.reply
    assert len(usages) == 1
    prompt = gateway.fake.prompt_tokens(MESSAGES)
    assert (usages[0].prompt_tokens, usages[0].completion_tokens) == (prompt, gateway.fake.completion_tokens)
    rows = await _settled_rows(gateway, key["id"])  # the client closes right after "[DONE]"
    # ... which is a complete stream: `ok`, not `cancelled`
    assert [(r["requests"], r["errors"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        (1, 0, prompt, gateway.fake.completion_tokens)
    ]


async def test_stream_without_include_usage_still_bills_reported_usage(gateway: Gateway) -> None:
    key = await gateway.create_key(budget="0.01")
    client = gateway.openai(key["secret"])

    stream = await client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=16, stream=True
    )
    chunks = [chunk async for chunk in stream]

    # the client did not ask for usage: it gets no usage chunk and no choice-less event ...
    assert chunks
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == gateway.fake.reply
    # ... but the gateway asked the upstream for it, and bills the reported numbers
    assert gateway.fake.requests[-1].json["stream_options"] == {"include_usage": True}
    prompt = gateway.fake.prompt_tokens(MESSAGES)
    rows = await _settled_rows(gateway, key["id"])
    assert len(rows) == 1
    assert rows[0]["errors"] == 0
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (
        prompt,
        gateway.fake.completion_tokens,
    )
    assert rows[0]["cost_micros"] == gateway.cost("fake-model", prompt, gateway.fake.completion_tokens)


async def test_embeddings(gateway: Gateway) -> None:
    key = await gateway.create_key(budget="0.01")
    client = gateway.openai(key["secret"])

    raw = await client.embeddings.with_raw_response.create(
        model="cheap-model", input=["one two three", "four"], encoding_format="float"
    )
    result = raw.parse()

    assert [item.index for item in result.data] == [0, 1]
    assert all(len(item.embedding) == gateway.fake.embedding_dimensions for item in result.data)
    assert result.usage.prompt_tokens == 4
    assert "x-maaskit-budget-remaining" in raw.headers
    rows = await gateway.usage(key_id=key["id"])
    assert [(r["model"], r["prompt_tokens"], r["completion_tokens"], r["cost_micros"]) for r in rows] == [
        ("cheap-model", 4, 0, gateway.cost("cheap-model", 4, 0))
    ]


async def test_models_list_shows_what_the_key_may_use(gateway: Gateway) -> None:
    everything = await gateway.create_key()
    restricted = await gateway.create_key(allowed_models=["cheap-model"])

    listed = await gateway.openai(everything["secret"]).models.list()
    only = await gateway.openai(restricted["secret"]).models.list()

    assert sorted(m.id for m in listed.data) == sorted(gateway.prices)
    assert [m.id for m in only.data] == ["cheap-model"]


# -- refusals as the client's own exception types -----------------------------------------------


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param(generate_key(), id="unknown-well-formed"),
        pytest.param("mk_not-a-key", id="malformed"),
        pytest.param("sk-proj-somebody-elses-openai-key", id="foreign"),
    ],
)
async def test_invalid_or_unknown_key_is_an_authentication_error(gateway: Gateway, credential: str) -> None:
    client = gateway.openai(credential)
    with pytest.raises(openai.AuthenticationError) as info:
        await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.response.headers["www-authenticate"] == "Bearer"
    assert credential not in info.value.response.text
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    with pytest.raises(openai.AuthenticationError):
        await client.embeddings.create(model="fake-model", input="x")
    assert gateway.fake.requests == []  # nothing reached the upstream


async def test_revoked_key_is_an_authentication_error(gateway: Gateway) -> None:
    key = await gateway.create_key()
    client = gateway.openai(key["secret"])
    await client.models.list()
    assert (await gateway.admin.post(f"/admin/keys/{key['id']}/revoke")).status_code == 200
    with pytest.raises(openai.AuthenticationError) as info:
        await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert _error(info.value)["code"] == "api_key.revoked"


async def test_rpm_limit_is_a_rate_limit_error_with_retry_after(gateway: Gateway) -> None:
    key = await gateway.create_key(rpm_limit=2)
    client = gateway.openai(key["secret"])
    for _ in range(2):
        await client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=8)

    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=8)

    assert info.value.status_code == 429
    retry_after = info.value.response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    assert _error(info.value)["type"] == "rate_limited"
    assert len(gateway.fake.requests) == 2  # the refused call never reached the upstream


async def test_spent_budget_is_a_rate_limit_error_with_budget_code(gateway: Gateway) -> None:
    # one call reserves ~16 x 30 + prompt x 10 micro-dollars and commits 5 x 30 + prompt x 10
    key = await gateway.create_key(budget_micros=1000)
    client = gateway.openai(key["secret"])
    refusal: openai.RateLimitError | None = None
    calls = 0
    while refusal is None and calls < 20:  # bounded: the budget admits only a few calls
        calls += 1
        try:
            await client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=16)
        except openai.RateLimitError as exc:
            refusal = exc
    assert refusal is not None

    assert refusal.status_code == 429
    assert _error(refusal)["code"] == "budget.exceeded"
    assert calls >= 2  # at least one call was admitted before the refusal
    rows = await gateway.usage(key_id=key["id"])
    assert sum(r["requests"] for r in rows) == calls - 1
    assert sum(r["cost_micros"] for r in rows) <= 1000  # committed spend never exceeds the budget


async def test_model_not_allowed_is_a_permission_denied_error(gateway: Gateway) -> None:
    key = await gateway.create_key(allowed_models=["cheap-model"])
    client = gateway.openai(key["secret"])
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert info.value.status_code == 403
    assert _error(info.value)["code"] == "admission.model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        await client.embeddings.create(model="fake-model", input="x")
    assert gateway.fake.requests == []


@pytest.mark.parametrize("model", ["../etc/passwd", "bad model", "", "a" * 300])
async def test_bad_model_name_is_a_bad_request_error(gateway: Gateway, model: str) -> None:
    key = await gateway.create_key()
    with pytest.raises(openai.BadRequestError) as info:
        await gateway.openai(key["secret"]).chat.completions.create(model=model, messages=MESSAGES)
    assert _error(info.value)["code"] == "admission.invalid_model"


async def test_unpriced_model_is_not_found(gateway: Gateway) -> None:
    key = await gateway.create_key()
    with pytest.raises(openai.NotFoundError) as info:
        await gateway.openai(key["secret"]).chat.completions.create(model="gpt-unpriced", messages=MESSAGES)
    assert _error(info.value)["code"] == "admission.unknown_model"
    assert gateway.fake.requests == []


# -- the usage report matches the calls exactly ---------------------------------------------------


@pytest.mark.parametrize("limits_backend", ["memory", "sql"])
async def test_usage_report_matches_the_calls_exactly(
    gateway_factory: GatewayFactory, limits_backend: str
) -> None:
    async with gateway_factory(limits_backend=limits_backend) as gw:
        key = await gw.create_key(budget="1")
        other = await gw.create_key(owner_id="bob")
        client = gw.openai(key["secret"])
        expected: dict[str, list[int]] = {m: [0, 0, 0, 0] for m in gw.prices}  # requests, in, out, cost

        def add(model: str, prompt: int, completion: int) -> None:
            row = expected[model]
            row[0] += 1
            row[1] += prompt
            row[2] += completion
            row[3] += gw.cost(model, prompt, completion)

        for model in ("fake-model", "cheap-model", "cheap-model"):
            done = await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16)
            assert done.usage is not None
            add(model, done.usage.prompt_tokens, done.usage.completion_tokens)
        for include in (True, False):
            stream = await client.chat.completions.create(
                model="cheap-model",
                messages=MESSAGES,
                max_tokens=16,
                stream=True,
                **({"stream_options": {"include_usage": True}} if include else {}),
            )
            async for _ in stream:
                pass
            add("cheap-model", gw.fake.prompt_tokens(MESSAGES), gw.fake.completion_tokens)
        vectors = await client.embeddings.create(model="cheap-model", input="five words in this input")
        add("cheap-model", vectors.usage.prompt_tokens, 0)
        await gw.openai(other["secret"]).chat.completions.create(model="fake-model", messages=MESSAGES)

        rows = await gw.usage(key_id=key["id"])
        got = {
            r["model"]: [r["requests"], r["prompt_tokens"], r["completion_tokens"], r["cost_micros"]]
            for r in rows
        }
        assert got == expected
        assert all(r["errors"] == 0 for r in rows)
        # the cheap model's per-token price is a fraction of a micro-dollar: each call rounds up once
        assert expected["cheap-model"][3] > 0
        # other keys' calls are not mixed in; the unfiltered report has both
        assert {r["key_id"] for r in await gw.usage()} == {key["id"], other["id"]}
        by_model = await gw.usage(key_id=key["id"], model="fake-model")
        assert [r["requests"] for r in by_model] == [1]


async def test_client_disconnect_mid_stream_is_billed_once_and_settles_the_reservation(
    gateway: Gateway,
) -> None:
    key = await gateway.create_key(budget="0.01")
    client = gateway.openai(key["secret"])
    body = {"model": "fake-model", "messages": MESSAGES, "max_tokens": 16}

    first = await client.chat.completions.with_raw_response.create(**body)
    before = _budget_left(first.headers)
    first_usage = first.parse().usage
    assert first_usage is not None

    release = gateway.fake.hold_stream(after_chunks=1)
    async with (
        httpx.AsyncClient(base_url=gateway.base, timeout=10) as raw_client,
        raw_client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=_auth(key["secret"])
        ) as response,
    ):
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            assert chunk.startswith(b"data: ")
            break  # read one chunk, then hang up while the upstream is paused

    async def recorded() -> bool:
        return sum(r["requests"] for r in await gateway.usage(key_id=key["id"])) == 2

    assert await gateway.eventually(recorded), "the cancelled stream was never recorded"
    release.set()  # let the paused upstream finish; nothing more may be billed

    rows = await gateway.usage(key_id=key["id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row["requests"], row["errors"]) == (2, 1)  # the cancelled stream counts as not-ok
    cancelled_in = row["prompt_tokens"] - first_usage.prompt_tokens
    cancelled_out = row["completion_tokens"] - first_usage.completion_tokens
    assert cancelled_in > 0  # the prompt was sent upstream: it is billed (estimated)
    assert cancelled_out <= gateway.fake.completion_tokens  # at most what was delivered
    first_cost = gateway.cost("fake-model", first_usage.prompt_tokens, first_usage.completion_tokens)
    cancelled_cost = gateway.cost("fake-model", cancelled_in, cancelled_out)
    assert row["cost_micros"] == first_cost + cancelled_cost

    # a later identical call works, and the budget moved by exactly the two committed costs:
    # the stream's reservation was committed at its cost, not leaked and not charged twice
    later = await client.chat.completions.with_raw_response.create(**body)
    assert before - _budget_left(later.headers) == first_cost + cancelled_cost
    assert sum(r["requests"] for r in await gateway.usage(key_id=key["id"])) == 3


async def test_upstream_failure_is_a_502_and_releases_the_reservation(gateway: Gateway) -> None:
    key = await gateway.create_key(budget="0.01")
    client = gateway.openai(key["secret"])
    body = {"model": "fake-model", "messages": MESSAGES, "max_tokens": 16}
    first = await client.chat.completions.with_raw_response.create(**body)
    before = _budget_left(first.headers)
    usage = first.parse().usage
    assert usage is not None
    calls_before = len(gateway.fake.requests)

    gateway.fake.fail_next(500, times=3)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(**body)

    assert info.value.status_code == 502
    error = _error(info.value)
    assert set(error) >= {"message", "type", "code"}
    assert error["type"] == "upstream"
    assert len(gateway.fake.requests) - calls_before == 3  # one try + two retries
    later = await client.chat.completions.with_raw_response.create(**body)
    cost = gateway.cost("fake-model", usage.prompt_tokens, usage.completion_tokens)
    assert before - _budget_left(later.headers) == cost  # the failed call cost nothing
    rows = await gateway.usage(key_id=key["id"])
    assert [(r["requests"], r["errors"], r["cost_micros"]) for r in rows] == [(3, 1, 2 * cost)]


async def test_upstream_failure_before_a_stream_starts_releases_the_reservation(gateway: Gateway) -> None:
    key = await gateway.create_key(budget="0.01")
    client = gateway.openai(key["secret"])
    body = {"model": "fake-model", "messages": MESSAGES, "max_tokens": 16}
    before = _budget_left((await client.chat.completions.with_raw_response.create(**body)).headers)

    gateway.fake.fail_next(503, times=3)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(**body, stream=True)
    assert info.value.status_code == 502

    later = _budget_left((await client.chat.completions.with_raw_response.create(**body)).headers)
    rows = await gateway.usage(key_id=key["id"])
    assert [(r["requests"], r["errors"]) for r in rows] == [(3, 1)]
    one_call = rows[0]["cost_micros"] // 2
    assert before - later == one_call


async def test_an_upstream_break_mid_stream_reaches_the_client_as_an_error_event(gateway: Gateway) -> None:
    # It was an ASGI crash ("response already started") and a truncated body, recorded as
    # `cancelled`; now the client's own stream raises the error and the call is recorded as an error.
    key = await gateway.create_key(budget="0.01")
    client = gateway.openai(key["secret"])
    gateway.fake.drop_next_stream(after_chunks=2)
    received: list[str] = []
    stream = await client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=16, stream=True
    )

    async def consume() -> None:
        async for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)

    with pytest.raises(openai.APIError) as info:
        await consume()
    assert "broke off" in info.value.message
    assert received  # the events before the break were delivered
    rows = await gateway.usage(key_id=key["id"])
    assert [(r["requests"], r["errors"]) for r in rows] == [(1, 1)]
    assert rows[0]["cost_micros"] > 0  # billed once, on the estimate of what was delivered
    assert len(gateway.fake.requests) == 1  # never retried after a byte

"""FakeUpstream speaks the OpenAI wire format identically in-process and on the loopback server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest

from maaskit.testing.fake_upstream import FakeUpstream

KEY = "sk-fake-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(params=["in-process", "loopback"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[tuple[httpx.AsyncClient, FakeUpstream]]:
    fake = FakeUpstream(api_key=KEY, models=("m1", "m2"), reply="a b c")
    if request.param == "in-process":
        async with httpx.AsyncClient(transport=fake.httpx_transport(), base_url=fake.base_url) as c:
            yield c, fake
    else:
        async with fake.serve() as base, httpx.AsyncClient(base_url=base) as c:
            assert base.startswith("http://127.0.0.1:")
            assert base.endswith("/v1")
            yield c, fake


async def test_auth_is_checked(client: tuple[httpx.AsyncClient, FakeUpstream]) -> None:
    c, fake = client
    resp = await c.get("/models")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert (await c.get("/models", headers={"Authorization": "Bearer other"})).status_code == 401
    ok = await c.get("/models", headers=AUTH)
    assert [m["id"] for m in ok.json()["data"]] == ["m1", "m2"]
    assert [r.authorized for r in fake.requests] == [False, False, True]
    assert all("authorization" not in r.headers for r in fake.requests)


async def test_chat_completion_and_usage(client: tuple[httpx.AsyncClient, FakeUpstream]) -> None:
    c, fake = client
    body = {"model": "m1", "messages": [{"role": "user", "content": "one two three"}]}
    data = (await c.post("/chat/completions", json=body, headers=AUTH)).json()
    assert data["choices"][0]["message"]["content"] == "a b c"
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    fake.omit_usage = True
    assert "usage" not in (await c.post("/chat/completions", json=body, headers=AUTH)).json()
    missing = await c.post("/chat/completions", json={**body, "model": "zz"}, headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert (await c.post("/chat/completions", json={"model": "m1"}, headers=AUTH)).status_code == 400


async def test_a_body_too_deep_for_json_is_a_400_not_a_crash(
    client: tuple[httpx.AsyncClient, FakeUpstream],
) -> None:
    c, fake = client
    deep = b'{"model": "m1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # RecursionError in json
    resp = await c.post(
        "/chat/completions", content=deep, headers={**AUTH, "content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "The body must be a JSON object."
    assert fake.requests[-1].json is None
    assert fake.requests[-1].body == deep


async def test_stream_with_and_without_usage(client: tuple[httpx.AsyncClient, FakeUpstream]) -> None:
    c, _fake = client
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    plain = (await c.post("/chat/completions", json=body, headers=AUTH)).content
    events = [e for e in plain.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert len(events) == 1 + 3 + 1 + 1  # role, 3 words, finish, DONE
    assert b'"usage"' not in plain
    with_usage = (
        await c.post(
            "/chat/completions", json={**body, "stream_options": {"include_usage": True}}, headers=AUTH
        )
    ).content
    last = json.loads([e for e in with_usage.split(b"\n\n") if e][-2][6:])
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 3


async def test_embeddings_are_deterministic(client: tuple[httpx.AsyncClient, FakeUpstream]) -> None:
    c, _fake = client
    body = {"model": "m1", "input": ["x", "y"]}
    first = (await c.post("/embeddings", json=body, headers=AUTH)).json()
    second = (await c.post("/embeddings", json=body, headers=AUTH)).json()
    assert first == second
    assert len(first["data"]) == 2
    assert len(first["data"][0]["embedding"]) == 8
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    assert (await c.post("/embeddings", json={"model": "m1", "input": 3}, headers=AUTH)).status_code == 400


async def test_scripted_failures_and_health(client: tuple[httpx.AsyncClient, FakeUpstream]) -> None:
    c, fake = client
    fake.fail_next(429, retry_after=2, times=2)
    for _ in range(2):
        resp = await c.get("/models", headers=AUTH)
        assert resp.status_code == 429
        assert resp.headers["retry-after"] == "2"
    assert (await c.get("/models", headers=AUTH)).status_code == 200
    fake.fail_next(200, body=b"garbage")
    assert (await c.get("/models", headers=AUTH)).content == b"garbage"
    assert (await c.get("/nope", headers=AUTH)).status_code == 404
    fake.reset()
    assert fake.requests == []


async def test_health_needs_no_key() -> None:
    fake = FakeUpstream()
    async with (
        fake.serve() as base,
        aiohttp.ClientSession() as session,
        session.get(base.removesuffix("/v1") + "/health") as resp,
    ):
        assert resp.status == 200
        assert await resp.text() == "ok"


async def test_serve_is_loopback_only() -> None:
    with pytest.raises(ValueError):
        async with FakeUpstream().serve(host="0.0.0.0"):
            pass


async def test_refused_and_dropped_connections() -> None:
    fake = FakeUpstream(api_key=KEY)
    async with httpx.AsyncClient(transport=fake.httpx_transport(), base_url=fake.base_url) as c:
        fake.refuse_next()
        with pytest.raises(httpx.ConnectError):
            await c.get("/models", headers=AUTH)
        fake.drop_next_stream(after_chunks=1)
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with pytest.raises(httpx.ReadError):
            await c.post("/chat/completions", json=body, headers=AUTH)
    async with fake.serve() as base, httpx.AsyncClient(base_url=base) as c:
        fake.refuse_next()
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/models", headers=AUTH)
